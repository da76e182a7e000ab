"""A stand-in for a paid teacher API: a real OpenAI-compatible HTTP server on 127.0.0.1 with a fixed latency.

A test double for a remote paid API (the only kind of double the project allows), used by the synthesis
tests and by `benchmarks/synthesis.py`; never by the pipeline itself. It plays the three roles the synthesis
prompts ask for (recognised from the system prompt) with well-formed, scripted answers, deterministic per
request, so a re-run sends identical requests and the response cache can prove that no paid call is repeated.
Faults (429 with a Retry-After of `retry_after_s`, 500, timeouts, malformed JSON, empty completions) are
injected at configurable rates, or in a fixed order for the first requests (`fault_script`). `agent` makes the
subtask agent misbehave the way small models do, to exercise the loop guards: "tool_errors" (every call a bad
URL), "no_tool" (text without a tool call, every step), "repeat" (the same search, verbatim, every step).

    with TeacherAPI(latency_s=0.1, tool_steps=2) as api:   # serves from its own process
        ... model.base_url = api.base_url ...
        api.stats()   # requests, completions, faults by kind, request arrival times

The server runs in a separate process (`python tests/teacher_api.py --port N ...`), so its work never
competes with the client's for the GIL, as with a real remote API. `port=` restarts it on a known port.
"""



import argparse
import asyncio
import hashlib
import json
import random
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter

# Its traces to the config: `tool_steps` (2) searches per subtask, then the answer. configs/tiny.yaml sizes these caps
# for the embedded model (one search per subtask); tests that run this teacher on it set them back to its shape.
SHAPE = ["synthesis.max_steps=3", "synthesis.max_tool_calls=2", "filter.rules.max_tool_calls_per_subtask=2"]

FAULTS = ("rate_limit", "server_error", "timeout", "malformed", "empty")
AGENT_MODES = ("normal", "tool_errors", "no_tool", "repeat")
JUDGE_MODES = ("normal", "garbled")


class TeacherAPI:
    def __init__(self, latency_s: float = 0.05, tool_steps: int = 2, subtasks: int = 3,
                 faults: dict[str, float] | None = None, timeout_sleep_s: float = 5.0, seed: int = 0,
                 retry_after_s: float = 0.0, fault_script: list[str] | None = None, agent: str = "normal",
                 port: int | None = None, reject_grammar: bool = False, require_key: str | None = None,
                 judge: str = "normal", findings: int = 0):
        assert agent in AGENT_MODES, agent
        assert judge in JUDGE_MODES, judge
        self.findings = findings  # extra cited sentences in the policy's report (a longer, better report)
        self.judge = judge  # "garbled": evaluation judge answers no form parses (the scorers' fallbacks)
        assert all(f in FAULTS for f in (fault_script or [])), fault_script
        self.latency_s, self.tool_steps, self.subtasks = latency_s, tool_steps, subtasks
        self.faults = faults or {}
        self.timeout_sleep_s, self.retry_after_s = timeout_sleep_s, retry_after_s
        self.fault_script, self.agent = list(fault_script or []), agent
        self.reject_grammar = reject_grammar  # answer 400 to a request carrying a grammar, as a server without it
        self.require_key = require_key  # answer 401 to a request without this bearer key
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.request_times: list[float] = []  # time.monotonic() at each request's arrival (one clock per host)
        self.lock = threading.Lock()
        self.in_flight = 0
        self.port = port or _free_port()
        self._proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict[str, int]:
        if self._proc is not None:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=10) as resp:
                return json.loads(resp.read())
        with self.lock:
            return {**self.counts, "request_times": list(self.request_times)}

    # ---------------------------------------------------------------------------------------------- answers
    def answer(self, body: dict) -> tuple[str, str | None]:
        """(text, stop sequence matched) for a chat request, by the role its system prompt gives."""
        messages = body["messages"]
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
        user = next((m["content"] for m in messages if m["role"] == "user"), "")
        digest = hashlib.sha256(json.dumps(messages).encode()).hexdigest()[:6]
        if not system and (verdict := self._evaluation_judge(user)) is not None:
            return verdict, None
        if "planner" in system:
            topic = user.rstrip("?.")[:80]
            return "\n".join(f"{i}. Aspect {i} of: {topic}" for i in range(1, self.subtasks + 1)), None
        if "deep-research assistant" in system:
            return self._policy(messages[-1]["content"] if messages[-1]["role"] == "assistant" else "", user, digest)
        if "lead author" in system:
            return (f"## Introduction\nThis report answers the question [1].\n\n## Findings\nThe evidence points "
                    f"one way [1][2], with caveats [3].\n\n## Conclusion\nIn short, see the sources [2]. ({digest})"), None
        # subtask agent: tool calls until `tool_steps` observations, then the answer
        observations = [m["content"] for m in messages if m["role"] == "user" and "<observation>" in m["content"]]
        last = messages[-1]
        prefill = last["content"] if last["role"] == "assistant" else ""
        if "<subtask_answer>" in prefill:
            return f"The findings, from the pages read ({digest}).", "</subtask_answer>"
        subtask = re.search(r"Your subtask: (.*)", user)
        words = (subtask.group(1) if subtask else "topic")[:60]
        head = "" if prefill.startswith("<think>") else "<think>\n"
        if self.agent == "tool_errors":
            return f"{head}Let me read a page.\n</think>\n<crawl_page>url=not-a-url-{len(observations)}", \
                "</crawl_page>"
        if self.agent == "no_tool":
            return f"{head}I keep thinking about {words} ({digest}).\n</think>", None
        if self.agent == "repeat":
            return f"{head}Search again.\n</think>\n<web_search>query={words}&num=5", "</web_search>"
        if len(observations) < self.tool_steps:
            return (f"{head}I need more evidence on {words} (step {len(observations) + 1}).\n</think>\n"
                    f"<plan>\nSearch for it.\n</plan>\n<web_search>query={words} {len(observations)}&num=5"), \
                "</web_search>"
        urls = re.findall(r"\((https?://[^)\s]+)\)", observations[-1]) if observations else []
        cite = f" [{urls[0]}]" if urls else ""
        return (f"{head}I have enough.\n</think>\n<subtask_answer>\nThe answer to {words} is supported{cite}. "
                f"({digest})"), "</subtask_answer>"

    def _evaluation_judge(self, user: str) -> str | None:
        """The evaluation judge's forms (oresearcher/prompts/race_*, fact_*, key_point): a target scored by its
        length against the reference, so a longer report wins; statements supported when the page shares a word
        of 6+ letters with them. A report's score on every criterion: one point per 100 characters, at most 10."""
        if self.judge == "garbled" and any(k in user for k in ("how much each of four", "grading criteria",
                                                                "You compare two", "You grade a", "Does the")):
            return "I cannot decide."
        if "Read the research report below and list" in user:  # FACT's fallback: each URL with its sentence
            report = user.split("Report:", 1)[1]
            found = re.findall(r"([^.\n(]*?)[\s,]*(?:see )?\(?(https?://(?:[^\s()]|\([^()\s]*\))+)", report)
            return "\n".join(f"{i}. {text.strip() or 'A claim'} | {url}" for i, (text, url) in enumerate(found, 1))
        if "how much each of four" in user:
            return "comprehensiveness: 40\ninsight: 30\ninstruction_following: 20\nreadability: 10\n"
        if "You write grading criteria" in user:
            n = int(re.search(r"list (\d+) criteria", user).group(1))
            return "\n".join(f"{i}. Criterion {i}" for i in range(1, n + 1))
        if "You compare two research reports" in user or "You grade a research report" in user:
            n = int(re.search(r"Answer with (\d+) lines", user).group(1))
            target = re.search(r"Report A \(target\):\n(.*?)\n\nReport B", user, re.S)
            if target is None:  # pointwise
                body = re.search(r"Report:\n(.*?)\n\nAnswer with", user, re.S).group(1)
                return "\n".join(f"{i}. score: {min(10, len(body) // 100)}" for i in range(1, n + 1)) + "\n"
            reference = re.search(r"Report B \(reference\):\n(.*?)\n\nAnswer with", user, re.S).group(1)
            a, b = (min(10, len(x) // 100) for x in (target.group(1), reference))
            return "\n".join(f"{i}. target: {a}, reference: {b}" for i in range(1, n + 1)) + "\n"
        if "Does the web page below support" in user:
            statement = re.search(r"Statement: (.*)", user).group(1)
            page = user.split("Web page:", 1)[1]
            words = {w.lower() for w in re.findall(r"[A-Za-z]{6,}", statement)}
            hit = any(w in page.lower() for w in words)
            return f"Reason: shared words.\nLabel: {'supported' if hit else 'unsupported'}"
        if "Does the research report below cover" in user:
            point = re.search(r"Key point: (.*)", user).group(1)
            report = user.split("Report:", 1)[1]
            words = {w.lower() for w in re.findall(r"[A-Za-z]{6,}", point)}
            return f"Reason: overlap.\nLabel: {'supported' if any(w in report.lower() for w in words) else 'absent'}"
        return None

    def _policy(self, prefill: str, query: str, digest: str) -> tuple[str, str | None]:
        """A trained policy writing one trace in one stream: `tool_steps` searches in one subtask (continuing its
        own prefill after each observation), then the subtask answer and the report, citing what it observed."""
        observations = re.findall(r"<observation>(.*?)</observation>", prefill, re.S)
        head = "" if prefill else "<subtask_list>\n1. The main facts\n</subtask_list>\n<subtask>\nThe main facts\n</subtask>\n"
        if len(observations) < self.tool_steps:
            return (f"{head}<think>\nI need evidence on this (step {len(observations) + 1}).\n</think>\n"
                    f"<web_search>query={query[:60]} {len(observations)}&num=3"), "</web_search>"
        urls = list(dict.fromkeys(re.findall(r"\]\((https?://[^)\s]+)\)", "".join(observations))))[:2]
        refs = "\n".join(f"[{i}]. {u} - Source {i}" for i, u in enumerate(urls, 1))
        cites = "".join(f"[{i}]" for i in range(1, len(urls) + 1))
        return (f"<think>\nI have enough.\n</think>\n<subtask_answer>\nThe facts [{urls[0] if urls else ''}].\n"
                f"</subtask_answer>\n<suggested_answer>\n## Introduction\nAn answer {cites}.\n\n"
                + "".join(f"Finding {k} about the observed sources holds [1].\n" for k in range(1, self.findings + 1))
                + "\n## Conclusion\n"
                f"In short {cites}. ({digest})\n\n## References\n{refs}\n"), "</suggested_answer>"

    # ------------------------------------------------------------------------------------------------- server
    def _app(self):
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, PlainTextResponse

        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            sent = "vllm" if "structured_outputs" in body else "llama.cpp" if "grammar" in body else None
            with self.lock:
                self.counts["requests"] += 1
                if sent:
                    self.counts[f"grammar.{sent}"] += 1
            if self.require_key and request.headers.get("authorization") != f"Bearer {self.require_key}":
                return JSONResponse({"error": {"message": "Incorrect API key provided"}}, status_code=401)
            if sent and self.reject_grammar:
                return JSONResponse({"error": {"message": f"Unrecognized request argument: {sent}"}}, status_code=400)
            with self.lock:
                self.request_times.append(time.monotonic())
                self.in_flight += 1
                self.counts["max_in_flight"] = max(self.counts["max_in_flight"], self.in_flight)
                if self.fault_script:
                    fault = self.fault_script.pop(0)
                else:
                    fault = next((f for f in FAULTS if self.rng.random() < self.faults.get(f, 0.0)), None)
                if fault:
                    self.counts[f"fault.{fault}"] += 1
            try:
                return await respond(body, fault)
            finally:
                with self.lock:
                    self.in_flight -= 1

        async def respond(body: dict, fault: str | None):
            await asyncio.sleep(self.latency_s)
            if fault == "rate_limit":
                return JSONResponse({"error": "slow down"}, status_code=429,
                                    headers={"Retry-After": f"{self.retry_after_s:g}"})
            if fault == "server_error":
                return JSONResponse({"error": "boom"}, status_code=500)
            if fault == "timeout":
                await asyncio.sleep(self.timeout_sleep_s)
            if fault == "malformed":
                return PlainTextResponse('{"choices": [{"message": ', media_type="application/json")
            text, stop = ("", None) if fault == "empty" else self.answer(body)
            with self.lock:
                self.counts["completions"] += fault is None
            prompt_tokens = sum(len(m["content"]) for m in body["messages"]) // 4
            return {"id": "chatcmpl-test", "object": "chat.completion", "model": body.get("model", "teacher"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop", "stop_reason": stop}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": max(1, len(text) // 4)}}

        @app.get("/stats")
        async def stats():
            with self.lock:
                return {**self.counts, "request_times": list(self.request_times)}

        return app

    def serve(self) -> None:
        """Serve in this process until killed."""
        import uvicorn

        uvicorn.run(self._app(), host="127.0.0.1", port=self.port, log_level="error", limit_concurrency=2000,
                    backlog=4096, timeout_keep_alive=60)

    def __enter__(self) -> "TeacherAPI":
        args = [sys.executable, __file__, "--port", str(self.port), "--latency", str(self.latency_s),
                "--tool-steps", str(self.tool_steps), "--subtasks", str(self.subtasks),
                "--timeout-sleep", str(self.timeout_sleep_s), "--faults", json.dumps(self.faults),
                "--retry-after", str(self.retry_after_s), "--fault-script", json.dumps(self.fault_script),
                "--agent", self.agent, "--judge", self.judge,
                "--findings", str(self.findings)] + (["--reject-grammar"] if self.reject_grammar else []) + \
            (["--require-key", self.require_key] if self.require_key else [])
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.stats()
                return self
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"teacher API did not start: {self._proc.stderr.read().decode()[-2000:]}") from None
                time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self._proc.kill()
        self._proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="stand-in teacher API (OpenAI-compatible)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--tool-steps", type=int, default=2)
    parser.add_argument("--subtasks", type=int, default=3)
    parser.add_argument("--timeout-sleep", type=float, default=5.0)
    parser.add_argument("--faults", default="{}")
    parser.add_argument("--retry-after", type=float, default=0.0)
    parser.add_argument("--fault-script", default="[]")
    parser.add_argument("--agent", default="normal", choices=AGENT_MODES)
    parser.add_argument("--reject-grammar", action="store_true")
    parser.add_argument("--require-key", default=None)
    parser.add_argument("--judge", default="normal", choices=JUDGE_MODES)
    parser.add_argument("--findings", type=int, default=0)
    a = parser.parse_args()
    TeacherAPI(a.latency, a.tool_steps, a.subtasks, json.loads(a.faults), a.timeout_sleep,
               retry_after_s=a.retry_after, fault_script=json.loads(a.fault_script), agent=a.agent,
               port=a.port, reject_grammar=a.reject_grammar, require_key=a.require_key, judge=a.judge,
               findings=a.findings).serve()
