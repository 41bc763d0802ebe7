"""A batch folder read back after a crash: whole results count, a record cut off does not."""

from __future__ import annotations

import json
from pathlib import Path

from llama_post.distribution.batch_folder import BatchFolder, failure, success

CHAT = "/v1/chat/completions"


def _line(custom_id: str, **body: object) -> str:
    request = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT, "body": request})


def test_lines_are_checked_and_numbered(tmp_path: Path) -> None:
    folder = BatchFolder(tmp_path)
    folder.path.mkdir(exist_ok=True)
    rows = [_line("a"), "", "[1]", _line("a"), _line("b", temperature=9), _line("c", stream=True)]
    folder.input.write_text("\n".join(rows) + "\n")
    lines = list(folder.lines(CHAT))
    assert [line.number for line in lines] == [1, 3, 4, 5, 6]  # the blank line 2 is no request
    assert lines[0].request is not None and lines[0].problem is None
    assert [line.param for line in lines[1:]] == [
        None,
        "custom_id",
        "body.temperature",
        "body.stream",
    ]
    assert "line 1" in str(lines[2].problem)  # whose custom_id it is


def test_results_are_read_back_and_a_cut_off_record_is_dropped(tmp_path: Path) -> None:
    folder = BatchFolder(tmp_path)
    folder.input.write_text("\n".join(_line(c) for c in "abcd") + "\n")
    lines = list(folder.lines(CHAT))
    folder.append(success(lines[0], {"ok": True}), ok=True)
    folder.append(failure(lines[2], "not_found_error", "no model"), ok=False)
    whole = folder.output.read_bytes()
    with folder.output.open("ab") as out:  # a kill in the middle of a write
        out.write(json.dumps(success(lines[1], {}))[:20].encode())
    assert folder.done(lines) == ({1, 3}, 1, 1)
    assert folder.output.read_bytes() == whole  # the next append starts on a line of its own
