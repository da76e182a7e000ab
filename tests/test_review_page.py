"""The human review gate end to end, in real headless Chromium (Playwright) against the real CLI.

`oresearcher filter` (review.required) queues a sample and waits; `oresearcher review` serves the page; a reviewer
works through the queue with the keyboard, the page is restarted midway, and the waiting flow resumes and blocks
or accepts the batch by its sampled rejection rate. Also: no token, 401; a `<script>` in an observation is shown
as text and never runs. The README's screenshot of the page is taken here (ORESEARCHER_SCREENSHOTS=1 writes it to
docs/).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from checkout import free_port
from traces import BLACK_DEATH, OBSERVED, REPORT, crawl, search
from traces import research_trace as trace

from oresearcher import filtering as f
from oresearcher.review.queue import ReviewQueue

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TOKEN = "browser-test-token-5f1c2a9e"
HOSTILE = '<script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2">'
SEEDS = [("What were the consequences of the Black Death for European labour?", "History"),
         ("How did the Peasants' Revolt of 1381 begin?", "History"),
         ("Why did medieval wages rise after 1350?", "History"),
         ("How does Yersinia pestis spread between hosts?", "Science"),
         ("What is the incubation period of bubonic plague?", "Science"),
         ("What did the Statute of Labourers of 1351 require?", "Law")]


def write_inputs(data: Path) -> None:
    """A seed set and one valid trace per seed, as synthesis leaves them; the first trace read a hostile page."""
    (data / "seeds").mkdir(parents=True)
    (data / "traces").mkdir()
    seeds, records = [], []
    for i, (query, topic) in enumerate(SEEDS):
        seeds.append({"id": f"seed{i}", "query": query, "source": "test", "line": i + 1, "topic": topic})
        observed = OBSERVED + (f"\n{HOSTILE}" if i == 0 else "")
        text = trace([search(f"{query} overview"), crawl(BLACK_DEATH)], [search(f"{query} sources")],
                     observation=observed)
        records.append({"id": f"trace{i}", "seed_id": f"seed{i}", "candidate": 0, "query": query, "trace": text,
                        "report": REPORT, "failure": None, "retryable": False})
    (data / "seeds" / "seeds.jsonl").write_text("".join(json.dumps(s) + "\n" for s in seeds))
    (data / "traces" / "traces.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def cli(*args: str, data: Path, tmp: Path) -> list[str]:
    """The CLI on the tiny config (the embedded model judging) with the test's data and a gate that waits."""
    settings = [f"paths.data_dir={data}", f"mlflow.tracking_uri=sqlite:///{tmp / 'mlflow.db'}",
                f"research.tape.path={tmp / 'tape.sqlite'}", "filter.judge.threshold=0", "filter.rules.min_report_chars=50",
                "filter.rules.max_tool_calls_per_subtask=2", "review.required=true",  # its traces search twice a subtask
                "review.poll_s=0.2", "review.min_per_batch=20", "review.max_reject_rate=0.3", "review.port=0"]
    return [sys.executable, "-m", "oresearcher.cli", *args, "--config", str(REPO / "configs" / "tiny.yaml"),
            *[x for s in settings for x in ("--set", s)]]


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "ORESEARCHER_REVIEW_TOKEN": TOKEN,
            "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def spawn():
    """Start CLI processes in their own process groups; whatever the test's outcome, every group is killed at the
    end (a waiting flow, and the temporary Prefect server it started, would otherwise outlive a failed test)."""
    procs: list[subprocess.Popen] = []

    def start(cmd: list[str], env: dict) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


class ReviewPage:
    """`oresearcher review` in a subprocess; its address read from the first line it prints."""

    def __init__(self, cmd: list[str], env: dict, spawn):
        self.proc = spawn(cmd, env)
        line = self.proc.stdout.readline()
        assert line.startswith("review page: http://127.0.0.1:"), line + self.proc.stdout.read()
        self.url = line.split()[2]
        assert TOKEN not in line  # a token from the environment is never printed

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


def wait_for_queue(data: Path, batch_items: int, flow: subprocess.Popen, timeout: float = 300) -> str:
    """The batch the waiting flow queued: once it holds `batch_items` undecided items."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert flow.poll() is None, "the filter flow ended before queuing:\n" + flow.stdout.read()
        if (data / "review.sqlite").exists():
            q = ReviewQueue(data / "review.sqlite")
            rows = q.db.conn().execute("SELECT batch, COUNT(*) FROM items WHERE verdict IS NULL GROUP BY batch"
                                       ).fetchall()
            if rows and rows[0][1] == batch_items:
                return rows[0][0]
        time.sleep(0.5)
    raise AssertionError("the filter flow never queued its sample")


def review(page, verdicts: list[tuple[str, str | None, str]], expect) -> list[str]:
    """Work through the queue with the keyboard: (verdict, reason key, comment) per item, in order. Returns the
    trace ids seen."""
    seen = []
    for verdict, reason_key, comment in verdicts:
        meta = page.locator("#item p.meta").first
        expect(meta).to_contain_text("Trace trace")
        trace_id = meta.inner_text().split()[1]
        assert trace_id not in seen
        seen.append(trace_id)
        if comment:
            page.keyboard.press("c")
            page.keyboard.type(comment)
            page.keyboard.press("Escape")
        before = page.locator("#progress").inner_text()
        if verdict == "accept":
            page.keyboard.press("a")
        else:
            page.keyboard.press("r")
            expect(page.locator("#reasons")).to_be_visible()
            page.keyboard.press(reason_key)
        expect(page.locator("#progress")).not_to_have_text(before)
        page.wait_for_function("prev => !(document.querySelector('#item p.meta')?.textContent || '')"
                               ".startsWith(`Trace ${prev} `)", arg=trace_id)  # the next item is shown
    return seen


def test_review_gate_in_a_real_browser(tmp_path, env, spawn):
    from playwright.sync_api import expect, sync_playwright

    assert Path(CHROMIUM).is_file(), "this test needs Debian's Chromium: apt-get install -y chromium (README, Tests)"

    data = tmp_path / "data"
    write_inputs(data)
    shots = REPO / "docs" if os.environ.get("ORESEARCHER_SCREENSHOTS") else tmp_path
    flow = spawn(cli("filter", data=data, tmp=tmp_path), env)
    batch = wait_for_queue(data, len(SEEDS), flow)
    assert f.read_gate(data, batch)["status"] == "pending_review"
    with pytest.raises(f.DatasetError, match="waiting for human review"):
        f.training_set(data)
    review_cmd = cli("review", data=data, tmp=tmp_path) + ["--set", f"review.port={free_port()}"]
    server = ReviewPage(review_cmd, env, spawn)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        assert page.goto(server.url).status == 401  # no token, no page
        assert page.goto(server.url + "api/progress").status == 401
        page.goto(server.url + f"?token={TOKEN}")
        assert "token" not in page.url  # kept in a cookie, out of the address bar
        page.fill("#reviewer", "alice")
        page.keyboard.press("Escape")  # leaves the field: the page claims the first item

        # The hostile trace comes first (queue order is by trace id): shown as text, never run.
        expect(page.locator(".step.observation .text").first).to_contain_text(HOSTILE)
        assert page.evaluate("window.__pwned") is None
        assert page.locator("#item script, #item img").count() == 0
        page.keyboard.press("e")  # every subtask opened
        expect(page.locator("details.subtask[open]")).to_have_count(2)
        page.set_viewport_size({"width": 1280, "height": 1950})  # the whole item, the verdict bar at its foot
        page.screenshot(path=str(shots / "review-page.png"))
        page.set_viewport_size({"width": 1280, "height": 1000})
        page.locator("a.cite").first.click()
        assert page.url.endswith("#ref-1")
        link = page.locator("#ref-1 a")
        assert link.get_attribute("href") == BLACK_DEATH and link.get_attribute("rel") == "noopener noreferrer"

        # Batch 1: 2 rejections of 6 = 0.33 > 0.3 -> blocked. The page restarts after two verdicts.
        seen = review(page, [("reject", "1", "the observation is a hostile page"), ("accept", None, "")], expect)
        server.stop()
        server = ReviewPage(review_cmd, env, spawn)  # the same address: the reviewer's name is remembered there
        page.goto(server.url)
        expect(page.locator("#progress")).to_have_text("2 of 6 reviewed · 1 rejected")
        seen += review(page, [("accept", None, ""), ("reject", "4", ""), ("accept", None, ""),
                              ("accept", None, "")], expect)
        expect(page.locator("#empty")).to_be_visible()
        assert sorted(seen) == [f"trace{i}" for i in range(6)]
        assert flow.wait(timeout=120) == 1, flow.stdout.read()  # blocked: the CLI says so in its exit code
        gate = f.read_gate(data, batch)
        assert gate["status"] == "blocked" and gate["reviewed"] == 6 and gate["rejected"] == 2, gate
        # What the Prefect UI showed while the flow waited (read from the temporary server's own database).
        db = sqlite3.connect(tmp_path / "prefect" / "prefect.db")
        shown = dict(db.execute("SELECT key, data FROM artifact WHERE key IS NOT NULL ORDER BY created"))
        assert float(shown["review-progress"]) == 100 and "below_threshold" not in shown["filter-report"]
        with pytest.raises(f.DatasetError, match="blocked from training: sampled rejection rate 0.33"):
            f.training_set(data)
        stored = {v["trace_id"]: v for v in ReviewQueue(data / "review.sqlite").verdicts(batch)}
        assert stored["trace0"]["reason_code"] == "format" and stored["trace0"]["reviewer"] == "alice"
        assert stored["trace0"]["comment"] == "the observation is a hostile page"
        assert stored[seen[3]]["reason_code"] == "low_quality"

        # Batch 2 (another filter setting, so another version; the judge's calls come from the cache): 1 of 6
        # = 0.17 <= 0.3 -> accepted, and the trace the reviewer rejected stays out of the training set.
        flow = spawn(cli("filter", data=data, tmp=tmp_path) + ["--set", "filter.rules.near_duplicate_threshold=0.95"],
                     env)
        batch2 = wait_for_queue(data, len(SEEDS), flow)
        assert batch2 != batch
        page.reload()
        second = review(page, [("accept", None, ""), ("reject", "3", "")] + [("accept", None, "")] * 4, expect)
        assert flow.wait(timeout=120) == 0, flow.stdout.read()
        assert f.read_gate(data, batch2)["status"] == "accepted"
        version, records, _ = f.training_set(data)
        assert version == batch2 and sorted(r["id"] for r in records) == sorted(set(second) - {second[1]})
        assert errors == []
        browser.close()
