"""Synthesis against a stand-in teacher API on 127.0.0.1: valid traces, faults, crashes, budgets, the client."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from teacher_api import SHAPE, TeacherAPI

from models.llm import Budget, LLMError, LLMStore, make_client
from oresearcher import grammar as g
from oresearcher.config import load_config
from oresearcher.research.environment import ResearchEnvironment
from oresearcher.seeds import ingest_files, write_seed_version
from oresearcher.synthesis import SynthesisContext, open_trace_store, run_seeds, traces_path

REPO = Path(__file__).resolve().parent.parent


def settings(data: Path, api: TeacherAPI, *more: str):
    return load_config(REPO / "configs" / "tiny.yaml", [
        f"paths.data_dir={data}", f"research.tape.path={data / 'tape.sqlite'}",
        f"mlflow.tracking_uri=sqlite:///{data.parent / 'mlflow.db'}",
        "synthesis.teacher.backend=openai", f"synthesis.teacher.base_url={api.base_url}",
        "synthesis.teacher.timeout_s=2", "synthesis.max_subtasks=3", "synthesis.limit=null",
        "synthesis.prefill_think=false", "synthesis.mlflow_traces=false", *SHAPE, *more])


def write_seeds(cfg, n: int) -> None:
    result = ingest_files([REPO / "seeds" / "default.jsonl"], cfg.ingest)
    result.seeds = result.seeds[:n]
    write_seed_version(result, cfg.paths.data, [REPO / "seeds" / "default.jsonl"])


def run_engine(cfg, seeds, budget: Budget | None = None, **client_kw):
    """Synthesize `seeds`; returns (the records this run appended, read from disk, outcomes)."""
    store = open_trace_store(cfg.paths.data)
    before = len(on_disk(cfg))
    client = make_client(cfg.synthesis.teacher, store=LLMStore(cfg.paths.data / "llm.sqlite"), budget=budget)
    if "backoff" in client_kw:
        client.backend.backoff_base_s = client_kw["backoff"]
    ctx = SynthesisContext(cfg, client, ResearchEnvironment.from_config(cfg), store, "test")
    outcomes = asyncio.run(run_seeds(seeds, ctx))
    return on_disk(cfg)[before:], outcomes


def on_disk(cfg) -> list[dict]:
    """Every record line the trace store holds, duplicates included: "exactly once" is checked here, never on
    the store's merged view, where a duplicate cannot show."""
    path = traces_path(cfg.paths.data)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def assert_each_key_settled_once(lines: list[dict], keys: set[tuple]) -> None:
    """Every (seed, candidate) has exactly one final record, the last of its key; retryable failures may precede it."""
    by_key: dict[tuple, list[dict]] = {}
    for r in lines:
        by_key.setdefault((r["seed_id"], r["candidate"]), []).append(r)
    assert set(by_key) == keys
    for key, records in by_key.items():
        assert [r["retryable"] for r in records] == [True] * (len(records) - 1) + [False], (key, records)


def seeds_of(n: int):
    return ingest_files([REPO / "seeds" / "default.jsonl"], load_config(REPO / "configs" / "tiny.yaml").ingest) \
        .seeds[:n]


def test_traces_from_a_well_behaved_teacher_are_valid(tmp_path):
    with TeacherAPI(latency_s=0.01) as api:
        cfg = settings(tmp_path / "data", api, "synthesis.candidates_per_seed=2")
        records, _ = run_engine(cfg, seeds_of(3))
        assert_each_key_settled_once(on_disk(cfg), {(s.id, k) for s in seeds_of(3) for k in (0, 1)})
        calls = api.stats()["completions"]
        again, _ = run_engine(cfg, seeds_of(3))  # everything is done: a re-run writes and calls nothing
        assert again == [] and api.stats()["completions"] == calls
    assert len(records) == 6
    for r in records:
        assert r["failure"] is None and r["valid"], r["violations"]
        parsed = g.parse(r["trace"])
        assert len(parsed.subtasks) == 3 and all(len(st.tool_calls) == 2 for st in parsed.subtasks)
        refs = g.references(parsed.report)
        assert refs and {ref.url for ref in refs} <= g.observed_urls(parsed)  # only URLs actually observed
        assert r["usage"]["calls"] == 1 + 3 * 3 + 1 and r["models"]["teacher"].startswith("openai:")


def test_a_tool_call_past_the_cap_stays_out_of_the_trace(tmp_path):
    """An unguided teacher that calls tools past `max_tool_calls`: the refused call gets no observation, so it is
    left out of the trace, which stays valid (a call without its observation would reject the whole paid trace)."""
    with TeacherAPI(latency_s=0.0) as api:  # two searches a subtask, against a cap of one
        cfg = settings(tmp_path / "data", api, "synthesis.max_tool_calls=1")
        records, _ = run_engine(cfg, seeds_of(1))
    [r] = records
    assert r["failure"] is None and r["valid"], r["violations"]
    assert all(len(st.tool_calls) == 1 for st in g.parse(r["trace"]).subtasks)


def test_faults_end_every_seed_once_as_trace_or_recorded_failure(tmp_path):
    faults = {"rate_limit": 0.08, "server_error": 0.08, "timeout": 0.03, "malformed": 0.05, "empty": 0.05}
    seeds = seeds_of(12)
    with TeacherAPI(latency_s=0.005, faults=faults, timeout_sleep_s=3) as api:
        port = api.port
        cfg = settings(tmp_path / "data", api, "synthesis.teacher.max_retries=2", "synthesis.concurrency=6")
        first, _ = run_engine(cfg, seeds, backoff=0.01)
        stats = api.stats()
    assert sorted(r["seed_id"] for r in first) == sorted(s.id for s in seeds)  # each exactly once, on disk
    assert all(stats.get(f"fault.{f}", 0) > 0 for f in faults), stats
    for r in first:
        assert (r["failure"] is None) != (r["trace"] == "")
        if r["failure"]:
            assert r["failure"].startswith("llm: ") and "attempts" in r["failure"] and r["retryable"]
    assert any(r["failure"] is None and r["valid"] for r in first)
    failed = sorted(r["seed_id"] for r in first if r["failure"])
    assert failed, "the outage failed no seed, so the re-run below would test nothing: raise the fault rates"
    # The outage is over and the same teacher is back at the same address: a re-run retries exactly the failed
    # seeds, and pays only for the calls they had not been answered before the outage (the rest are cached).
    with TeacherAPI(latency_s=0.0, port=port) as api:
        retried, _ = run_engine(cfg, seeds)
        completions = api.stats()["completions"]
    assert sorted(r["seed_id"] for r in retried) == failed and all(r["valid"] for r in retried)
    assert_each_key_settled_once(on_disk(cfg), {(s.id, 0) for s in seeds})
    cached = sum(r["usage"]["cache_hits"] for r in retried)
    assert cached > 0 and completions == sum(r["usage"]["calls"] for r in retried) - cached


def test_budget_stops_cleanly_and_a_rerun_continues(tmp_path):
    seeds = seeds_of(6)
    with TeacherAPI(latency_s=0.01) as api:
        cfg = settings(tmp_path / "data", api, "synthesis.concurrency=1",
                       "synthesis.teacher.price_in_per_mtok=100", "synthesis.teacher.price_out_per_mtok=100")
        records, outcomes = run_engine(cfg, seeds, budget=Budget(max_cost_usd=1.0))
        assert 0 < len(records) < len(seeds) and all(r["failure"] is None for r in records)
        assert any(o.stopped == "budget_spent" for o in outcomes)
        calls_before = api.stats()["completions"]
        rest, _ = run_engine(cfg, seeds, budget=Budget(max_cost_usd=1000.0))
        assert sorted(r["seed_id"] for r in records + rest) == sorted(s.id for s in seeds)
        assert api.stats()["completions"] > calls_before
    assert_each_key_settled_once(on_disk(cfg), {(s.id, 0) for s in seeds})


def test_token_budget_stops_cleanly(tmp_path):
    seeds = seeds_of(4)
    with TeacherAPI(latency_s=0.0) as api:
        cfg = settings(tmp_path / "data", api, "synthesis.concurrency=1")
        budget = Budget(max_tokens=20_000)  # a seed here takes about 8,500 prompt + completion tokens (11 calls)
        records, outcomes = run_engine(cfg, seeds, budget=budget)
    assert 0 < len(records) < len(seeds) and any(o.stopped == "budget_spent" for o in outcomes)
    assert all(r["failure"] is None for r in records)  # the seed cut short is left unrecorded, to resume later
    # Calls reserve their worst case before they start: the run stops within one call's worth above the cap,
    # and (3 agents reserving at once) within three calls' worth below it.
    largest_call = 3000  # tokens of the largest single call here, generously
    assert 20_000 - 3 * largest_call <= budget.spent_tokens <= 20_000 + largest_call
    assert budget.reserved_tokens == 0


def test_api_key_comes_from_env_and_is_never_stored(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_TEACHER_KEY", "sk-teacher-secret")
    with TeacherAPI(latency_s=0.0) as api:
        cfg = settings(tmp_path / "data", api, "synthesis.teacher.api_key_env=TEST_TEACHER_KEY")
        records, _ = run_engine(cfg, seeds_of(1))
    assert records[0]["valid"]
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            assert b"sk-teacher-secret" not in path.read_bytes(), path


@pytest.mark.parametrize(("agent", "overrides", "stop_reason"), [
    ("tool_errors", ["synthesis.max_tool_errors=3", "synthesis.max_tool_calls=10", "synthesis.max_steps=10"],
     "tool_errors"),
    ("no_tool", ["synthesis.same_kind_window=3", "synthesis.max_steps=10"], "same_kind_loop"),
    ("repeat", ["synthesis.max_tool_calls=2", "synthesis.max_steps=4"], "step_cap"),
])
def test_loop_guards_end_a_misbehaving_agent(tmp_path, agent, overrides, stop_reason):
    """The released inference loop's guards: 10 tool errors, the last 15 steps of one kind, verbatim repeats
    counted, and the step cap that forces a subtask answer (thresholds from config)."""
    with TeacherAPI(latency_s=0.0, agent=agent) as api:
        cfg = settings(tmp_path / "data", api, "synthesis.max_subtasks=1", *overrides)
        (record,), _ = run_engine(cfg, seeds_of(1))
    (sub,) = record["structure"]["subtasks"]
    assert record["failure"] is None and sub["stop_reason"] == stop_reason, sub
    parsed = g.parse(record["trace"])
    assert parsed.subtasks[0].answer  # forced at the end, whatever stopped the agent
    if agent == "tool_errors":
        assert sub["steps"] == 3 and sub["tool_errors"] == 3
    elif agent == "no_tool":
        assert sub["steps"] == 3 and sub["tool_calls"] == 0
    else:
        assert sub["steps"] == 4 and sub["tool_calls"] == 2 and sub["repeated_outputs"] == 3


def test_crash_midway_then_rerun_keeps_each_seed_once_and_repays_only_in_flight(tmp_path):
    """SIGKILL the whole `oresearcher synthesize` process group mid-run, run again, compare with a clean run."""
    n_seeds, concurrency = 8, 2
    env = {**os.environ, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_HOME": str(tmp_path / "prefect")}
    with TeacherAPI(latency_s=0.15) as api:
        clean = settings(tmp_path / "clean", api, f"synthesis.concurrency={concurrency}")
        write_seeds(clean, n_seeds)
        records, _ = run_engine(clean, seeds_of(n_seeds))
        clean_calls = api.stats()["completions"]
        assert len(records) == n_seeds

        data = tmp_path / "crash"
        cfg = settings(data, api, f"synthesis.concurrency={concurrency}")
        write_seeds(cfg, n_seeds)
        args = [sys.executable, "-m", "oresearcher.cli", "synthesize", "--config", str(REPO / "configs" / "tiny.yaml")]
        overrides = [x for o in _overrides(data, api, concurrency) for x in ("--set", o)]
        start = api.stats()["completions"]
        proc = subprocess.Popen(args + overrides, env=env, cwd=REPO, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        store_path = traces_path(data)
        deadline = time.monotonic() + 180
        while not (store_path.exists() and store_path.read_text().count("\n") >= 3):
            assert time.monotonic() < deadline and proc.poll() is None, "synthesis never got going"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # a machine crash: the server, Prefect and every thread die at once
        proc.wait()
        first_calls = api.stats()["completions"] - start
        done_before = store_path.read_text().count("\n")
        assert done_before < n_seeds, "killed too late to test anything"

        rerun = subprocess.run(args + overrides, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        total_calls = api.stats()["completions"] - start

    lines = [json.loads(line) for line in store_path.read_text().splitlines()]
    assert sorted(r["seed_id"] for r in lines) == sorted(s.id for s in seeds_of(n_seeds))
    in_flight_max = concurrency * 3  # each in-flight seed has at most its 3 parallel agents waiting on a call
    assert clean_calls <= total_calls <= clean_calls + in_flight_max, (clean_calls, first_calls, total_calls)


def _overrides(data: Path, api: TeacherAPI, concurrency: int) -> list[str]:
    return [f"paths.data_dir={data}", f"research.tape.path={data / 'tape.sqlite'}",
            f"mlflow.tracking_uri=sqlite:///{data.parent / 'mlflow-crash.db'}", "synthesis.teacher.backend=openai",
            f"synthesis.teacher.base_url={api.base_url}", "synthesis.max_subtasks=3", "synthesis.limit=null",
            "synthesis.prefill_think=false", "synthesis.mlflow_traces=false", f"synthesis.concurrency={concurrency}"]


@pytest.mark.slow
def test_embedded_smollm2_synthesizes_a_valid_trace_guided_and_a_parseable_one_unguided(tmp_path):
    """The real 135M model end to end. Guided, its trace is valid; unguided, whatever it writes parses and the
    record says why it fails."""
    small = [f"paths.data_dir={tmp_path}", f"research.tape.path={tmp_path / 'tape.sqlite'}", "synthesis.max_steps=2",
             "synthesis.mlflow_traces=false", "synthesis.guide.think=60", "synthesis.guide.plan=30",
             "synthesis.guide.answer_sentences=1", "synthesis.guide.report_sentences=1", "synthesis.max_subtasks=2",
             "synthesis.teacher.max_new_tokens=48"]
    cfg = load_config(REPO / "configs" / "tiny.yaml", small)
    (guided,), _ = run_engine(cfg, seeds_of(1))
    assert guided["failure"] is None and guided["guided"] and guided["valid"], guided["violations"]
    assert guided["models"]["teacher"].startswith("local:smollm2-135m-instruct@")
    assert sum(st["tool_calls"] for st in guided["structure"]["subtasks"]) >= 2 and guided["structure"]["citations"]
    cfg = load_config(REPO / "configs" / "tiny.yaml", [*small, "synthesis.teacher.guided=false",
                                                      f"paths.data_dir={tmp_path / 'unguided'}"])
    (record,), _ = run_engine(cfg, seeds_of(1))
    assert record["failure"] is None and not record["guided"] and record["trace"].startswith("<subtask_list>")
    parsed = g.parse(record["trace"])
    assert 1 <= len(parsed.subtasks) <= 2 and parsed.report is not None
    assert record["valid"] == (record["violations"] == [])
    assert record["usage"]["calls"] >= 4


# ------------------------------------------------------------------------------------------- the LLM client
def teacher_cfg(api: TeacherAPI, **kw):
    return load_config(REPO / "configs" / "tiny.yaml").synthesis.teacher.model_copy(
        update={"backend": "openai", "base_url": api.base_url, "timeout_s": 5.0, **kw})


ASK = [{"role": "system", "content": "You are the planner."}, {"role": "user", "content": "Why do volcanoes erupt?"}]


def test_response_cache_and_cost_ledger(tmp_path):
    with TeacherAPI(latency_s=0.0) as api:
        store = LLMStore(tmp_path / "llm.sqlite")
        client = make_client(teacher_cfg(api, price_in_per_mtok=2.0, price_out_per_mtok=8.0), store=store)

        async def go():
            first = await client.chat(ASK, seed=1)
            again = await client.chat(ASK, seed=1)
            other = await client.chat(ASK, seed=2)  # another candidate: its own sample, paid for
            return first, again, other

        first, again, other = asyncio.run(go())
        assert api.stats()["completions"] == 2
    assert not first.cached and again.cached and not other.cached and again.text == first.text
    assert first.cost_usd == pytest.approx((first.prompt_tokens * 2 + first.completion_tokens * 8) / 1e6)
    totals = store.totals()
    assert totals["calls"] == 3 and totals["cached"] == 1
    assert totals["cost_usd"] == pytest.approx(first.cost_usd + other.cost_usd)


def test_cache_identity_is_the_model_not_the_endpoint(tmp_path):
    """The same teacher restarted on another port (or behind another proxy) is not paid twice; a different model
    under the same served name is told apart by `identity`."""
    store = LLMStore(tmp_path / "llm.sqlite")
    with TeacherAPI(latency_s=0.0) as api:
        first = asyncio.run(make_client(teacher_cfg(api), store=store).chat(ASK, seed=1))
    with TeacherAPI(latency_s=0.0) as moved:  # another port: another base_url
        client = make_client(teacher_cfg(moved), store=store)
        again = asyncio.run(client.chat(ASK, seed=1))
        assert again.cached and again.text == first.text and moved.stats().get("completions", 0) == 0
        other = make_client(teacher_cfg(moved, identity="openai:another-model-behind-the-same-name"), store=store)
        assert not asyncio.run(other.chat(ASK, seed=1)).cached and moved.stats()["completions"] == 1
        renamed = make_client(teacher_cfg(moved, served_name="a-different-served-model"), store=store)
        assert not asyncio.run(renamed.chat(ASK, seed=1)).cached and moved.stats()["completions"] == 2
    assert client.model_id == "openai:smollm2-135m-instruct" and client.backend.endpoint == moved.base_url


@pytest.mark.parametrize(("api", "field"), [("vllm", "grammar.vllm"), ("llama.cpp", "grammar.llama.cpp")])
def test_guided_calls_send_the_grammar_in_the_field_the_endpoint_takes(api, field):
    guide = g.step_guide([])
    with TeacherAPI(latency_s=0.0) as server:
        client = make_client(teacher_cfg(server, guided=True, grammar_api=api), key="synthesis.teacher")
        resp = asyncio.run(client.chat(ASK, guide=guide))
        plain = make_client(teacher_cfg(server, guided=True, grammar_api="none"))  # cannot: runs unguided
        unguided = asyncio.run(plain.chat(ASK, guide=guide, seed=5))
        stats = server.stats()
    assert client.guided and resp.guided and stats[field] == 1
    assert not plain.guided and not unguided.guided and stats["requests"] == 2


def test_a_server_that_refuses_the_grammar_names_the_setting_to_change():
    with TeacherAPI(latency_s=0.0, reject_grammar=True) as server:
        client = make_client(teacher_cfg(server, guided=True, grammar_api="vllm"), key="synthesis.teacher")
        with pytest.raises(LLMError, match=r"refused the request with its grammar .* set synthesis\.teacher\.grammar_api") as e:
            asyncio.run(client.chat(ASK, guide=g.step_guide([])))
        assert server.stats()["requests"] == 1  # not retried within the run...
        assert e.value.transient  # ...but a re-run with the setting fixed retries the seed


def test_a_wrong_api_key_names_the_setting_and_leaves_the_seed_to_retry(monkeypatch):
    monkeypatch.setenv("TEST_TEACHER_KEY", "sk-wrong")
    with TeacherAPI(latency_s=0.0, require_key="sk-right") as server:
        cfg = teacher_cfg(server, api_key_env="TEST_TEACHER_KEY")
        with pytest.raises(LLMError, match=r"HTTP 401 .* check synthesis\.teacher\.api_key_env") as e:
            asyncio.run(make_client(cfg, key="synthesis.teacher").chat(ASK))
        assert e.value.transient and server.stats()["requests"] == 1  # failed at once, retried by the next run
        monkeypatch.setenv("TEST_TEACHER_KEY", "sk-right")
        assert asyncio.run(make_client(cfg, key="synthesis.teacher").chat(ASK)).text


def test_concurrency_limit_and_retry_after(tmp_path):
    with TeacherAPI(latency_s=0.2) as api:
        client = make_client(teacher_cfg(api, max_concurrency=3))

        async def go():
            await asyncio.gather(*[client.chat(ASK, seed=i) for i in range(9)])

        start = time.perf_counter()
        asyncio.run(go())
        assert api.stats()["max_in_flight"] == 3 and time.perf_counter() - start >= 0.6
    with TeacherAPI(latency_s=0.0, faults={"rate_limit": 1.0}) as api:  # every answer is a 429
        client = make_client(teacher_cfg(api, max_retries=1))
        client.backend.backoff_base_s = 0.01
        with pytest.raises(Exception, match=r"HTTP 429 \(after 2 attempts\)"):
            asyncio.run(client.chat(ASK))
        assert api.stats()["requests"] == 2


def test_retry_after_header_is_honoured():
    from models.backends.openai import _retry_after

    assert _retry_after("2") == 2.0 and _retry_after(None) == 0.0 and _retry_after("Wed, 21 Oct 2026") == 0.0
    assert _retry_after("9999") == 120.0
    # A 429 asking for 1.5 s: the retry arrives no sooner, although our own backoff would wait ~0.01 s.
    with TeacherAPI(latency_s=0.0, fault_script=["rate_limit"], retry_after_s=1.5) as api:
        client = make_client(teacher_cfg(api, max_retries=2))
        client.backend.backoff_base_s = 0.01
        assert asyncio.run(client.chat(ASK)).text
        first, retry = api.stats()["request_times"]
    assert retry - first >= 1.5


def test_rate_limit_spreads_requests():
    from models.backends.openai import RateLimiter

    async def go():
        limiter = RateLimiter(per_minute=600)  # one every 0.1 s
        start = time.perf_counter()
        for _ in range(5):
            await limiter.acquire()
        return time.perf_counter() - start

    assert 0.39 <= asyncio.run(go()) < 10  # the lower bound is the behaviour; the upper only catches a hang


def test_vllm_backend_is_lazy_and_explains_itself_on_cpu():
    """CPU environments never import vllm; asking for the backend here fails with a clear message."""
    import importlib.util

    from models.backends.vllm import VLLMBackend
    from models.llm import ChatRequest, LLMError

    assert "vllm" not in sys.modules
    cfg = load_config(REPO / "configs" / "paper.yaml").model
    backend = make_client(cfg.model_copy(update={"backend": "vllm"})).backend
    assert isinstance(backend, VLLMBackend) and backend.model_id == "vllm:Qwen/Qwen2.5-72B-Instruct"
    if importlib.util.find_spec("vllm") is None:
        request = ChatRequest((("user", "hi"),), 8, 0.0, 1.0)
        with pytest.raises(LLMError, match="needs vLLM on a GPU machine"):
            asyncio.run(backend.generate(request))


def test_a_crashing_candidate_is_recorded_alone_and_the_others_still_run(tmp_path):
    from oresearcher.synthesis import synthesize_seed

    with TeacherAPI(latency_s=0.0) as api:
        cfg = settings(tmp_path / "data", api, "synthesis.candidates_per_seed=3")
        store = open_trace_store(cfg.paths.data)
        client = make_client(cfg.synthesis.teacher, store=LLMStore(cfg.paths.data / "llm.sqlite"))
        ctx = SynthesisContext(cfg, client, ResearchEnvironment.from_config(cfg), store, "test")
        calls = {"n": 0}

        async def flaky_runner(seed, ctx):
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("worker died")
            return await synthesize_seed(seed, ctx)

        asyncio.run(run_seeds(seeds_of(1), ctx, flaky_runner))
    records = {r["candidate"]: r for r in store.latest()}
    assert records[0]["failure"] == "error: RuntimeError: worker died" and not records[0]["retryable"]
    assert records[1]["valid"] and records[2]["valid"]


def test_budget_holds_under_concurrency(tmp_path):
    with TeacherAPI(latency_s=0.1) as api:
        cfg = settings(tmp_path / "data", api, "synthesis.concurrency=8", "synthesis.teacher.price_in_per_mtok=100",
                       "synthesis.teacher.price_out_per_mtok=100")
        budget = Budget(max_cost_usd=0.5)
        records, outcomes = run_engine(cfg, seeds_of(8), budget=budget)
    one_call_max = (6000 + cfg.synthesis.teacher.max_new_tokens) * 100 / 1e6  # the largest prompt here, generously
    assert budget.spent_usd <= 0.5 + one_call_max and budget.reserved_usd == pytest.approx(0.0, abs=1e-9)
    assert any(o.stopped == "budget_spent" for o in outcomes)
