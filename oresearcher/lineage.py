"""Lineage cards: where a dataset or a model version came from, walked back through MLflow.

Each stage run names what it read (dataset inputs tagged `dvc.path`/`dvc.version`, digest = the DVC digest) and
what it wrote (`dvc.out.<path>` tags = the digest it wrote). So from any run, its inputs lead to the runs that
produced them (same path, same digest), and theirs to theirs: seeds → traces → filtered → SFT → GRPO →
evaluation. A run that started from a registered model (`start_from`) or evaluated one (`model_version`) leads to
the run that trained it. Each step of the card carries the run's stage, config, code revision, data version, the
datasets it read and wrote, and what it cost.

    card = lineage_card(client, run_id)              # the steps, from the run back to the seed files
    print(render(card))                              # markdown: the model version's description, `lineage.md`
    oresearcher lineage RUN_ID | models:/NAME/N      # the same, printed
"""

from __future__ import annotations

from dataclasses import dataclass, field

OUT_TAG = "dvc.out."


@dataclass
class Step:
    run_id: str
    stage: str
    config: str
    git_commit: str
    data_version: str
    read: list[tuple[str, str, str]] = field(default_factory=list)   # (name, path in the data tree, digest)
    wrote: list[tuple[str, str]] = field(default_factory=list)       # (path in the data tree, digest)
    costs: dict[str, float] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)                  # registered versions it started from/evaluated
    from_runs: list[str] = field(default_factory=list)               # the runs it depends on


def _step(run) -> Step:
    tags = run.data.tags
    read = []
    for di in run.inputs.dataset_inputs if run.inputs else []:
        t = {x.key: x.value for x in di.tags}
        read.append((di.dataset.name, t.get("dvc.path", ""), di.dataset.digest))  # no path: not in the data tree
    models = [v for k, v in tags.items() if k in ("start_from", "model_version") and v]
    return Step(run.info.run_id, tags.get("stage", run.info.run_name), tags.get("config", ""),
                tags.get("git_commit", ""), tags.get("dvc.data_version", tags.get("data_version", "")), read,
                sorted((k[len(OUT_TAG):], v) for k, v in tags.items() if k.startswith(OUT_TAG)),
                {k: v for k, v in run.data.metrics.items() if "cost" in k or k.endswith("tokens")}, models)


def _producer(client, experiment_id: str, path: str, digest: str) -> str | None:
    """The newest run that wrote `digest` at `path`; else the newest that wrote `path` at all (a dataset changed
    since outside any run: a filtered version whose gate a reviewer decided)."""
    for where in (f"tags.`{OUT_TAG}{path}` = '{digest}'", f"tags.`{OUT_TAG}{path}` LIKE '%'"):
        runs = client.search_runs([experiment_id], where, order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            return runs[0].info.run_id
    return None


def model_run(client, ref: str) -> str | None:
    """The run that registered `models:/name/N`, `models:/name@alias` or `name/N`."""
    from oresearcher.registry import model_version

    version = model_version(client, ref)
    return version.run_id if version else None


def lineage_card(client, run_id: str, limit: int = 50) -> list[Step]:
    """`run_id`'s step, then every step it depends on (breadth first, each once)."""
    steps: list[Step] = []
    seen: set[str] = set()
    queue = [run_id]
    while queue and len(steps) < limit:
        rid = queue.pop(0)
        if rid in seen:
            continue
        seen.add(rid)
        run = client.get_run(rid)
        step = _step(run)
        for _, path, digest in step.read:
            if path and (producer := _producer(client, run.info.experiment_id, path, digest)):
                step.from_runs.append(producer)
        for ref in step.models:
            if trained := model_run(client, ref):
                step.from_runs.append(trained)
        # a summary run (an evaluation over several models, a pipeline invocation) is made of its child runs
        step.from_runs += [c.info.run_id for c in client.search_runs(
            [run.info.experiment_id], f"tags.mlflow.parentRunId = '{rid}'", order_by=["attributes.start_time ASC"])]
        step.from_runs = [r for r in dict.fromkeys(step.from_runs) if r != rid]
        queue += step.from_runs
        steps.append(step)
    return steps


def render(steps: list[Step], title: str = "Lineage") -> str:
    """The card as markdown: one section per step, newest first."""
    lines = [f"# {title}", ""]
    for s in steps:
        lines.append(f"## {s.stage} (run `{s.run_id}`)")
        lines.append(f"- config `{s.config}`, code `{s.git_commit[:12] or '?'}`, data version `{s.data_version or '-'}`")
        for name, path, digest in s.read:
            lines.append(f"- read {name}" + (f": `{path}`" if path else "") + f" @ `{digest}`")
        for path, digest in s.wrote:
            lines.append(f"- wrote `{path}` @ `{digest}`")
        for ref in s.models:
            lines.append(f"- model {ref}")
        if s.costs:
            lines.append("- " + ", ".join(f"{k} {v:g}" for k, v in sorted(s.costs.items())))
        if s.from_runs:
            lines.append("- from runs " + ", ".join(f"`{r}`" for r in s.from_runs))
        lines.append("")
    return "\n".join(lines)
