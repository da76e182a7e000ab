"""A training run in a process of its own, for the kill-and-resume tests: it prints `{"step": N}` as each optimizer
step ends and `{"done": N, "resumed_from": ...}` at the end, so a test can SIGKILL it midway and read what the
second run did.

    python tests/train_until_killed.py sft  '<overrides JSON>' <output dir>
    python tests/train_until_killed.py grpo '<overrides JSON>' <output dir> <start model>
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from transformers import TrainerCallback  # noqa: E402

from oresearcher.config import load_config  # noqa: E402


class Steps(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        print(json.dumps({"step": state.global_step}), flush=True)


def main(stage: str, overrides: str, output_dir: str, start: str | None = None) -> None:
    cfg = load_config("configs/tiny.yaml", json.loads(overrides))
    if stage == "sft":
        from traces import valid_trace

        from oresearcher.sft import train_sft

        recs = [{"query": f"q{i}", "trace": valid_trace()} for i in range(4)]
        out = train_sft(cfg, recs, Path(output_dir), callbacks=[Steps()])
    else:
        from models.llm import make_client
        from oresearcher.grpo import train_grpo
        from oresearcher.judge import Judge

        judge = Judge(make_client(cfg.filter.judge.model, cache_dir=cfg.paths.cache), cfg.filter.judge)
        out = train_grpo(cfg, start, ["What caused the Black Death?"], Path(output_dir), judge, callbacks=[Steps()])
    print(json.dumps({"done": out["steps"], "resumed_from": out["resumed_from"]}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
