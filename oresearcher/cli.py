"""`oresearcher`: one CLI for every stage. Heavy imports live inside the commands, so `--help` is instant.

    oresearcher search "causes of the Black Death"        # exactly what an agent sees
    oresearcher crawl https://en.wikipedia.org/wiki/Black_Death
    oresearcher trace check traces.jsonl --field trace    # validate every trace in a file
    oresearcher model prepare                             # convert the embedded model once
    oresearcher filter                                    # three-tier filtering of the traces
    oresearcher review                                    # the human spot-check page
    oresearcher sft                                       # fine-tune the policy on the accepted traces
    oresearcher run --config configs/tiny.yaml            # the pipeline, as far as it exists

User errors (a bad config key or value, a missing or unreadable file) are one line on stderr and exit code 2,
found before any Prefect server starts: each command checks its config and inputs first. `--debug` shows the
traceback. `search`, `crawl`, `trace check` and `model prepare` never start a Prefect server.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

DEFAULT_CONFIG = "configs/tiny.yaml"


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help="settings YAML (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. --set research.tape.mode=replay (repeatable)")


def _settings(args):
    from oresearcher.config import load_config

    return load_config(args.config, args.overrides)


def _check_registered(cfg, models: list[str]) -> None:
    """Every `models:/` URI names a version in the registry: checked before a flow (and its server) starts."""
    if registered := [m for m in models if m.startswith("models:/")]:
        from oresearcher.registry import require_version
        from oresearcher.tracking import client as tracking_client

        client = tracking_client(cfg)
        for uri in registered:
            require_version(client, uri, cfg.mlflow.resolved_uri())


def _check_seed_files(paths: list[str]) -> None:
    """Every seed file exists and reads as seed records: checked before a flow (and its server) starts."""
    from oresearcher.seeds import read_records

    for path in paths:
        read_records(Path(path), [])


def cmd_search(args) -> int:
    from oresearcher.research.environment import ResearchEnvironment

    env = ResearchEnvironment.from_config(_settings(args))
    print(env.web_search(args.query, args.num or env.default_num))
    return 0


def cmd_crawl(args) -> int:
    from oresearcher.research.environment import ResearchEnvironment

    env = ResearchEnvironment.from_config(_settings(args))
    print(env.crawl_page(args.url))
    return 0


def cmd_trace_check(args) -> int:
    from oresearcher.trace_check import check_file

    report = check_file(Path(args.file), field=args.field, max_shown=args.max_violations)
    print(report.text)
    return 0 if report.all_valid else 1


def cmd_model_prepare(args) -> int:
    from models.resolve import resolve_model

    cfg = _settings(args)
    print(resolve_model(cfg.model.name, cfg.paths.cache))
    return 0


def cmd_ingest(args) -> int:
    _settings(args)
    _check_seed_files(args.files)
    from flows.ingest import ingest

    result = ingest(paths=args.files, config_path=args.config, overrides=args.overrides)
    print(f"seed version {result['seed_version']}: " + ", ".join(f"{k} {v}" for k, v in result["counts"].items()))
    return 0


def cmd_synthesize(args) -> int:
    import asyncio

    from oresearcher.seeds import load_seeds

    load_seeds(_settings(args).paths.data)  # no seed set yet: say so before any server starts
    from flows.synthesize import synthesize

    result = asyncio.run(synthesize(config_path=args.config, overrides=args.overrides))
    print(", ".join(f"{k} {v}" for k, v in result.items() if not isinstance(v, dict)))
    return 0 if result["status"] in ("complete", "budget_spent") else 1


def cmd_filter(args) -> int:
    import asyncio

    from oresearcher.seeds import load_seeds
    from oresearcher.synthesis import traces_path

    cfg = _settings(args)
    load_seeds(cfg.paths.data)
    if not traces_path(cfg.paths.data).exists():
        raise FileNotFoundError(f"no traces in {traces_path(cfg.paths.data)}: run `oresearcher synthesize` first")
    from flows.filter import filter_traces

    result = asyncio.run(filter_traces(config_path=args.config, overrides=args.overrides))
    print(f"filtered version {result['version']}\n{_filter_lines(result)}")
    return 0 if result["gate"] in ("accepted", "unreviewed") else 1


def cmd_review(args) -> int:
    import os
    import secrets

    from oresearcher.review.queue import ReviewQueue, queue_path
    from oresearcher.review.server import ReviewServer

    cfg = _settings(args)
    token = os.environ.get(cfg.review.token_env) or secrets.token_urlsafe(24)
    server = ReviewServer(ReviewQueue(queue_path(cfg.paths.data)), cfg.review, token)
    p = server.queue.progress()
    shown = f"{server.url}?token={token}" if cfg.review.token_env not in os.environ else \
        f"{server.url}  (token: ${cfg.review.token_env})"
    print(f"review page: {shown}\n{p.decided} of {p.items} queued traces reviewed; Ctrl+C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
    return 0


def cmd_sft(args) -> int:
    from oresearcher.filtering import latest_version, training_set

    cfg = _settings(args)
    if args.dry_run:  # what would run, and with which settings; starts nothing
        import shlex

        import yaml

        from oresearcher.launch import distributed
        from oresearcher.sft import launch_command
        from tasks.training import checkpoint_dir

        version = args.dataset or latest_version(cfg.paths.data) or "LATEST"
        cmd = launch_command(cfg, args.config, args.overrides, version, checkpoint_dir(cfg, "sft", version), "RUN_ID")
        how = "launch command" if distributed(cfg) else "runs in the flow's own process, as"
        print(f"# {how} (from {cfg.paths.resolve(Path('.'))}):\n{shlex.join(cmd)}\n# resolved config:")
        print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
        return 0
    training_set(cfg.paths.data, args.dataset)  # a missing, blocked or pending version: one line, no server
    from flows.sft import sft

    r = sft(config_path=args.config, overrides=args.overrides, dataset_version=args.dataset)
    print(f"SFT on {r['samples']} traces of filtered version {r['dataset_version']}: {r['steps']} steps, loss "
          f"{r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}; registered {_settings(args).registry.policy_name} "
          f"version {r['model_version']} (@challenger), MLflow run {r['run_id']}")
    return 0


def cmd_grpo(args) -> int:
    cfg = _settings(args)
    if args.dry_run:
        import shlex

        import yaml

        from oresearcher.grpo import serve_command
        from tasks.training import registry_dir

        start = args.start_from or cfg.grpo.start_from or ""
        number = start.rsplit("/", 1)[-1]
        folder = str(registry_dir(cfg, number)) if number.isdigit() else "START_VERSION_DIR"
        if cfg.grpo.rollout_backend == "vllm_server":
            print(f"# first, on the rollout GPUs: the server TRL syncs the policy into each step (the flow downloads "
                  f"the start version to {folder})\n{shlex.join(serve_command(cfg, folder))}")
        from oresearcher.grpo import entry_args
        from oresearcher.launch import distributed, launch_command
        from tasks.training import grpo_checkpoint_dir

        cmd = launch_command(cfg, "oresearcher.grpo", entry_args(args.config, args.overrides, folder,
                                                                 grpo_checkpoint_dir(cfg, number or "N"), "RUN_ID"))
        how = "launch command" if distributed(cfg) else "runs in the flow's own process, as"
        print(f"# then the grpo flow (it starts from {start or 'the newest SFT version'}); its {how}:\n"
              f"{shlex.join(cmd)}\n# with this config:")
        print(yaml.safe_dump({"grpo": cfg.grpo.model_dump(mode="json"), "rollout": cfg.rollout.model_dump(mode="json"),
                              "train": cfg.train.model_dump(mode="json")}, sort_keys=False), end="")
        return 0
    from oresearcher.tracking import client as tracking_client
    from tasks.training import resolve_start, training_queries

    training_queries.fn(cfg)  # no seed set, or no version to start from: one line, before any server starts
    resolve_start.fn(cfg, tracking_client(cfg), args.start_from)
    from flows.grpo import grpo

    r = grpo(config_path=args.config, overrides=args.overrides, start_from=args.start_from)
    s = r["summary"]
    print(f"GRPO from {r['start_from']}: {r['steps']} steps, mean reward {s.get('reward_first', 0):.3f} -> "
          f"{s.get('reward_last', 0):.3f}, format pass rate {s.get('format_first', 0):.2f} -> "
          f"{s.get('format_last', 0):.2f}")
    if r["guard"]["stopped"]:
        print(f"  guard: {r['guard']['reason']}; kept step {r['kept_step']}")
    print(f"  registered {cfg.registry.policy_name} version {r['model_version']} (@challenger), MLflow run "
          f"{r['run_id']}" if r["model_version"] else "  nothing registered (no checkpoint after a good step)")
    return 0


def cmd_heldout(args) -> int:
    import asyncio

    _check_registered(_settings(args), args.models or [])
    from flows.heldout import heldout

    r = asyncio.run(heldout(config_path=args.config, overrides=args.overrides, models=args.models or None))
    print(r["table"])
    return 0


def cmd_evaluate(args) -> int:
    import asyncio

    from flows.evaluate import evaluate

    cfg = _settings(args)  # a bad config, query set or label list is one line, before any flow starts
    from oresearcher.evaluation import query_set

    query_set(args.queries or cfg.evaluate.queries, 1, cfg.paths.resolve(cfg.ingest.heldout_seeds))
    _check_registered(cfg, args.models or [])
    if args.labels and len(args.labels) != len(args.models):
        print(f"error: {len(args.labels)} --label for {len(args.models)} --model: give one label per model",
              file=sys.stderr)
        return 2
    r = asyncio.run(evaluate(config_path=args.config, overrides=args.overrides, models=args.models or None,
                             labels=args.labels or None, queries=args.queries, limit=args.limit,
                             promote=False if args.no_promote else None))
    print(_evaluation_lines(r))
    print(f"MLflow run: {r['run_id']}")
    return 0


def cmd_retrain(args) -> int:
    import asyncio

    _settings(args)
    from flows.retrain import retrain

    r = asyncio.run(retrain(config_path=args.config, overrides=args.overrides, stop_after=args.stop_after))
    if r["status"] == "nothing_new":
        print("no new seed files in the inbox: nothing to retrain on")
    elif r["status"] == "ingested":
        s = r["seeds"]
        print(f"seed version {s['seed_version']}: {s['counts']} (from {len(r['new_files'])} new file(s))")
    else:
        print(_training_lines(r, _settings(args).registry.policy_name))
        print(_evaluation_lines(r["evaluation"]))
    return 0


def cmd_restore(args) -> int:
    from oresearcher.tracking import client
    from oresearcher.versioning import VersioningError, restore_run

    cfg = _settings(args)
    uri = cfg.mlflow.resolved_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise VersioningError(f"no MLflow store at {uri.removeprefix('sqlite:///')} (mlflow.tracking_uri)")
    into = Path(args.into or f"restored/{args.run_id}")
    for d, r in restore_run(client(cfg), args.run_id, into, args.remote):
        print(f"{d.name}: {into / d.relpath} ({r.files} file(s), digest {d.digest}, data version {d.version}, "
              f"read by run {d.run_id})")
    return 0


def cmd_lineage(args) -> int:
    from mlflow.exceptions import MlflowException

    from oresearcher.lineage import lineage_card, model_run, render
    from oresearcher.tracking import client

    mlflow = client(_settings(args))
    run_id = model_run(mlflow, args.ref) if args.ref.startswith("models:/") else args.ref
    try:
        mlflow.get_run(run_id or "")
    except MlflowException:
        run_id = None
    if run_id is None:
        raise FileNotFoundError(f"no MLflow run or registered model version {args.ref} in {mlflow.tracking_uri}")
    print(render(lineage_card(mlflow, run_id), f"Lineage of {args.ref}"))
    return 0


def cmd_ui(args) -> int:
    """The Prefect server (flow runs, deployments, artifacts) and the MLflow UI (runs, models), both on localhost
    only; Ctrl-C (or SIGTERM) stops both."""
    import shutil
    import signal
    import subprocess
    import time
    import urllib.request

    cfg = _settings(args)
    uri = cfg.mlflow.resolved_uri()
    bindir = Path(sys.executable).parent
    prefect = shutil.which("prefect", path=str(bindir)) or "prefect"
    mlflow = shutil.which("mlflow", path=str(bindir)) or "mlflow"
    servers = {
        "Prefect UI": ([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(args.prefect_port)],
                       f"http://127.0.0.1:{args.prefect_port}", f"http://127.0.0.1:{args.prefect_port}/api/health"),
        "MLflow UI": ([mlflow, "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(args.mlflow_port)],
                      f"http://127.0.0.1:{args.mlflow_port}", f"http://127.0.0.1:{args.mlflow_port}/health"),
    }
    procs = {name: subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
             for name, (cmd, _, _) in servers.items()}

    def stop(*_):
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)

    signal.signal(signal.SIGTERM, lambda *_: (stop(), sys.exit(0)))
    try:
        deadline = time.monotonic() + args.timeout
        pending = dict(servers)
        while pending:
            for name, (_, _, health) in list(pending.items()):
                if procs[name].poll() is not None:
                    print(f"error: {name} exited at start (port in use?): {' '.join(servers[name][0])}",
                          file=sys.stderr)
                    return 2
                try:
                    with urllib.request.urlopen(health, timeout=2):
                        del pending[name]
                except OSError:
                    pass
            if pending and time.monotonic() > deadline:
                print(f"error: {', '.join(pending)} not up after {args.timeout:.0f} s", file=sys.stderr)
                return 2
            time.sleep(0.5)
        for name, (_, url, _) in servers.items():
            print(f"{name}: {url}")
        print(f"flows report to the Prefect server with PREFECT_API_URL=http://127.0.0.1:{args.prefect_port}/api; "
              f"MLflow reads {uri}. Ctrl-C stops both.", flush=True)
        while all(p.poll() is None for p in procs.values()):
            time.sleep(1)
        return 1  # one of them died
    except KeyboardInterrupt:
        return 0
    finally:
        stop()


def cmd_run(args) -> int:
    import asyncio

    cfg = _settings(args)
    _check_seed_files([str(cfg.paths.resolve(cfg.ingest.default_seeds))])
    from flows.pipeline import pipeline

    result = asyncio.run(pipeline(config_path=args.config, overrides=args.overrides))
    print(_filter_lines(result["filter"]))
    print(_training_lines(result, cfg.registry.policy_name))
    print(_evaluation_lines(result["evaluation"]))
    print(_where_to_look(cfg, result))
    return 0


def _where_to_look(cfg, result: dict) -> str:
    versions = {stage: (result.get(stage) or {}).get("data_version") for stage in ("seeds", "synthesis", "filter", "evaluation")}
    return "\n".join([
        "where to look:",
        "  Prefect UI and MLflow UI: .venv/bin/oresearcher ui   (then http://127.0.0.1:4200 and http://127.0.0.1:5000)",
        f"  MLflow store: {cfg.mlflow.resolved_uri()} (experiment {cfg.mlflow.experiment})",
        "  review page: .venv/bin/oresearcher review",
        "  data versions (DVC, data.dvc): " + ", ".join(f"{k} {v}" for k, v in versions.items() if v),
        f"  the data any run read, byte for byte: .venv/bin/oresearcher restore <run id>   (e.g. "
        f"{(result.get('evaluation') or {}).get('run_id', '<run id>')}, the final evaluation)",
        f"  models: {cfg.registry.policy_name} in the MLflow Model Registry (@challenger, @champion)",
    ])


def _evaluation_lines(r: dict) -> str:
    lines = [r["table"]]
    if r["decision"]:
        lines.append(f"promotion: {r['decision']['summary']}")
    lines.append(f"evaluation report (plots, intervals): {r['report']}")
    return "\n".join(lines)


def _training_lines(result: dict, name: str) -> str:
    t, r, h = result["sft"], result["grpo"], result["heldout"]
    s = r["summary"]
    lines = [f"sft: {t['steps']} steps on {t['samples']} traces, loss {t['losses'][0]:.3f} -> {t['losses'][-1]:.3f}; "
             f"{name} version {t['model_version']}",
             f"grpo: {r['steps']} steps, mean reward {s.get('reward_first', 0):.3f} -> {s.get('reward_last', 0):.3f}, "
             f"format pass rate {s.get('format_first', 0):.2f} -> {s.get('format_last', 0):.2f}; "
             + (f"{name} version {r['model_version']} (@challenger)" if r["model_version"] else
                f"nothing registered ({r['guard'].get('reason')})"),
             h["table"]]
    if sample := h.get("sample"):
        lines.append(f"a held-out trace by {sample['model']} ({sample['stop_reason']}, "
                     f"{'valid' if sample['valid'] else 'invalid'}):\n" + _excerpt(sample["trace"]))
    return "\n".join(lines)


def _excerpt(trace: str, lines: int = 12) -> str:
    body = trace.strip().splitlines()
    return "\n".join(f"  | {line[:110]}" for line in body[:lines]) + (f"\n  | ... ({len(body) - lines} more lines)"
                                                                      if len(body) > lines else "")


def _filter_lines(result: dict) -> str:
    j = result["judge"]
    rules = ", ".join(f"{k} {v}" for k, v in result["rules"].items()) or "none"
    mean = f", mean score {j['mean_score']:.2f} of {j['scale']}" if j["mean_score"] is not None else ""
    return "\n".join([f"filter: {result['summary']}", f"  rejections by rule: {rules}",
                      f"  judge: {j['parsed']} of {j['judged']} scores parsed{mean} ({j['model']})",
                      f"  gate: {result['gate_reason']}; review page: `oresearcher review`"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oresearcher", description="O-Researcher: open deep-research recipe")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    # `--debug` is accepted after the command too; SUPPRESS keeps a subcommand from resetting the global one
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback")
    sub.add_parser = functools.partial(sub.add_parser, parents=[debug])

    p = sub.add_parser("search", help="run web_search and print what the agent sees")
    p.add_argument("query", help="one or more queries separated by ' | '")
    p.add_argument("--num", type=int, default=None, help="results across the queries (1-20)")
    _add_config_args(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("crawl", help="run crawl_page and print what the agent sees")
    p.add_argument("url", help="one or more URLs separated by ' | '")
    _add_config_args(p)
    p.set_defaults(func=cmd_crawl)

    trace = sub.add_parser("trace", help="trace grammar tools").add_subparsers(dest="trace_command", required=True)
    p = trace.add_parser("check", help="validate every trace in a JSONL (or plain text) file")
    p.add_argument("file")
    p.add_argument("--field", default=None,
                   help="JSON field holding the trace text (default: auto-detect; dotted paths and "
                        "chat 'messages' lists are understood)")
    p.add_argument("--max-violations", type=int, default=10, help="violations shown per trace")
    p.set_defaults(func=cmd_trace_check)

    model = sub.add_parser("model", help="model helpers").add_subparsers(dest="model_command", required=True)
    p = model.add_parser("prepare", help="resolve (and convert, once) the configured model; print its path")
    _add_config_args(p)
    p.set_defaults(func=cmd_model_prepare)

    p = sub.add_parser("ingest", help="validate and version seed query files (JSONL, CSV, Parquet, text)")
    p.add_argument("files", nargs="+")
    _add_config_args(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("synthesize", help="synthesize multi-agent traces for the current seed version")
    _add_config_args(p)
    p.set_defaults(func=cmd_synthesize)

    p = sub.add_parser("filter", help="three-tier filtering of the synthesized traces into a dataset version")
    _add_config_args(p)
    p.set_defaults(func=cmd_filter)

    p = sub.add_parser("review", help="serve the human spot-check page of the review queue")
    _add_config_args(p)
    p.set_defaults(func=cmd_review)

    p = sub.add_parser("sft", help="fine-tune the policy on the latest accepted filtered dataset version")
    p.add_argument("--dataset", default=None, help="a filtered version id (default: the latest)")
    p.add_argument("--dry-run", action="store_true", help="print the training command and resolved config; run nothing")
    _add_config_args(p)
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("grpo", help="agentic GRPO from a registered SFT version, in the research environment")
    p.add_argument("--from", dest="start_from", default=None,
                   help="models:/<name>/<version> or models:/<name>@<alias> (default: the newest SFT version)")
    p.add_argument("--dry-run", action="store_true", help="print the vLLM server command and the GRPO settings")
    _add_config_args(p)
    p.set_defaults(func=cmd_grpo)

    p = sub.add_parser("heldout", help="base, SFT and GRPO models on the held-out split, unguided, side by side")
    p.add_argument("--model", dest="models", action="append", default=[],
                   help="a model to run instead of the defaults (config name, folder or models:/ URI); repeatable")
    _add_config_args(p)
    p.set_defaults(func=cmd_heldout)

    p = sub.add_parser("evaluate", help="RACE, FACT and key-point scores of policies on a query set; promotion")
    p.add_argument("--queries", default=None, help="drb, drb-en, drb-zh, drg, heldout, or a seed file "
                                                   "(default: evaluate.queries)")
    p.add_argument("--limit", type=int, default=None, help="the first N queries (drb: English and Chinese in turn)")
    p.add_argument("--model", dest="models", action="append", default=[],
                   help="a policy: config name, folder, models:/ URI, or http(s)://host/v1#served-name; repeatable "
                        "(default: base, @champion, @challenger)")
    p.add_argument("--label", dest="labels", action="append", default=[], help="a name per --model, in order")
    p.add_argument("--no-promote", action="store_true", help="compare only; never move the champion alias")
    _add_config_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("retrain", help="new seed files in the inbox join the seed set, then the whole pipeline")
    p.add_argument("--stop-after", choices=["ingest"], default=None, help="only make the new seed version")
    _add_config_args(p)
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("ui", help="start the Prefect server and the MLflow UI on localhost (Ctrl-C stops both)")
    p.add_argument("--prefect-port", type=int, default=4200)
    p.add_argument("--mlflow-port", type=int, default=5000)
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for both to answer")
    _add_config_args(p)
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("restore", help="bring back, byte for byte, the datasets an MLflow run read (from DVC)")
    p.add_argument("run_id", help="an MLflow run: a stage's, or a summary run (its child runs' inputs)")
    p.add_argument("--into", default=None, help="an empty folder (default: restored/<run_id>)")
    p.add_argument("--remote", default=None, help="read from this DVC remote, not the one the run recorded")
    _add_config_args(p)
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("lineage", help="where a run's or a model version's data and models came from")
    p.add_argument("ref", help="an MLflow run id, or models:/NAME/N or models:/NAME@ALIAS")
    _add_config_args(p)
    p.set_defaults(func=cmd_lineage)

    p = sub.add_parser("run", help="run the pipeline flow on a config")
    _add_config_args(p)
    p.set_defaults(func=cmd_run)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input, not a bug: reported as one line unless --debug."""
    from models.llm import BudgetExceeded
    from oresearcher.config import ConfigError
    from oresearcher.evaluation import QuerySetError
    from oresearcher.filtering import DatasetError
    from oresearcher.registry import StartNotFound
    from oresearcher.research.corpus import CorpusError
    from oresearcher.research.tape import TapeMiss
    from oresearcher.seeds import IngestError
    from oresearcher.versioning import VersioningError

    return (ConfigError, CorpusError, TapeMiss, FileNotFoundError, IngestError, PermissionError, DatasetError,
            BudgetExceeded, StartNotFound, QuerySetError, VersioningError)


def main(argv: list[str] | None = None) -> int:
    # The embedded defaults run offline: the temporary Prefect server's telemetry would log an ERROR on every run
    # that cannot reach Prefect's analytics endpoint. An explicit setting in the environment still wins.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as e:
        if args.debug:
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `oresearcher ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())

