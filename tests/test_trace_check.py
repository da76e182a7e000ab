"""`oresearcher trace check` on files mixing valid and broken traces, in several record shapes."""

from __future__ import annotations

import json

from traces import valid_trace

from oresearcher import grammar as g
from oresearcher.cli import main


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) if isinstance(r, dict) else r for r in records) + "\n")


def test_mixed_file_reports_each_trace(tmp_path, capsys):
    good = valid_trace()
    no_answer = good[: good.index("<suggested_answer>")]
    doubled = good.replace("</think>", "</think>\n<think>\nagain\n</think>", 1)
    path = tmp_path / "traces.jsonl"
    write_jsonl(path, [{"id": "a", "trace": good}, {"id": "b", "trace": no_answer}, "{not json",
                       {"id": "d", "trace": doubled}, {"id": "e", "other": "x"}, {"id": "f", "trace": good}])
    code = main(["trace", "check", str(path)])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert out[0] == "line 1 (id a): valid"
    assert out[1] == "line 2 (id b): INVALID (1 violations)" and "missing_suggested_answer" in out[2]
    assert out[3].startswith("line 3: UNREADABLE: not JSON")
    assert out[4] == "line 4 (id d): INVALID (1 violations)" and "step_order" in out[5]
    assert out[6].startswith("line 5 (id e): UNREADABLE: no trace field")
    assert out[7] == "line 6 (id f): valid"
    assert out[8] == "checked 6 traces: 2 valid, 4 invalid"
    assert "unreadable 2" in out[9] and "missing_suggested_answer 1" in out[9]


def test_all_valid_exits_zero_and_field_option(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [{"sample": {"text": valid_trace()}}])
    assert main(["trace", "check", str(path), "--field", "sample.text"]) == 0
    assert "1 valid, 0 invalid" in capsys.readouterr().out


def test_chat_messages_records_are_joined_back_into_a_trace(tmp_path, capsys):
    """Third-party SFT data: assistant turns stop at tool tags, observations come back as tool/user turns."""
    trace = valid_trace()
    parts, messages = trace.split("<observation>"), [{"role": "system", "content": "You are a researcher."},
                                                      {"role": "user", "content": "Black Death?"}]
    messages.append({"role": "assistant", "content": parts[0].rstrip()})
    for part in parts[1:]:
        obs, rest = part.split("</observation>", 1)
        messages.append({"role": "tool", "content": g.unescape(obs.strip())})
        messages.append({"role": "assistant", "content": rest.strip()})
    path = tmp_path / "chat.jsonl"
    write_jsonl(path, [{"messages": messages}])
    assert main(["trace", "check", str(path)]) == 0, capsys.readouterr().out


def test_plain_text_file_and_missing_file(tmp_path, capsys):
    path = tmp_path / "one.txt"
    path.write_text(valid_trace())
    assert main(["trace", "check", str(path)]) == 0
    assert main(["trace", "check", str(tmp_path / "nope.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_empty_file_is_not_a_pass(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    assert main(["trace", "check", str(path)]) == 1
