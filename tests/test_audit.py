"""The audit trail's cores: the hash chain, the writer (append, restart, rotation, reopen) and
`audit verify`, which names the first line that breaks a chain. No sockets: the writer is
handed a clock, and files live in tmp_path."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.audit import (
    AuditFileBusy,
    AuditTrail,
    ChainBroken,
    check_line,
    request_events,
    seal,
    verify_file,
    verify_files,
)
from proxy.cli import main
from proxy.request import ObjectRef, RequestContext, request_id
from proxy.ssec import CustomerKey

REPO = Path(__file__).resolve().parent.parent


def _clock() -> itertools.count[float]:
    return itertools.count(1_700_000_000.0, 0.5)


def _trail(path: Path, **kwargs: object) -> AuditTrail:
    clock = _clock()
    trail = AuditTrail(str(path), clock=lambda: next(clock), **kwargs)  # type: ignore[arg-type]
    trail.open()
    return trail


def _write(trail: AuditTrail, count: int, start: int = 0) -> None:
    for number in range(start, start + count):
        trail.record(
            "object.streamed",
            {"request_id": f"r{number}", "sub": "alice", "key": f"k/{number}", "bytes": number},
        )


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_sealed_line_checks_and_names_its_prev() -> None:
    line, digest = seal({"event": "x", "n": 1}, None)
    checked = check_line(line)
    assert checked.problem is None and checked.hash == digest
    assert checked.fields == {"event": "x", "n": 1, "prev": None}
    after, _ = seal({"event": "y"}, digest)
    assert check_line(after).fields["prev"] == digest


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda line: line.replace(b'"n":1', b'"n":2'), "does not match its content"),
        (lambda line: line[:-3] + b'0"}', "does not match its content"),
        (lambda line: line[:-70], "not an audit line"),
        (lambda line: b"hello", "not an audit line"),
    ],
)
def test_an_edited_line_fails_its_own_check(edit: object, problem: str) -> None:
    line, _ = seal({"event": "x", "n": 1}, None)
    checked = check_line(edit(line))  # type: ignore[operator]
    assert checked.problem is not None and problem in checked.problem


def test_each_event_is_one_whole_line_written_at_once(tmp_path: Path) -> None:
    """Flushed as it happens: readable before close, and in order."""
    path = tmp_path / "audit.jsonl"
    trail = _trail(path)
    _write(trail, 3)
    lines = _lines(path)  # not closed yet
    assert [line["request_id"] for line in lines] == ["r0", "r1", "r2"]
    assert list(lines[0])[:2] == ["time", "event"]
    assert lines[0]["time"] == "2023-11-14T22:13:20.000+00:00"
    assert lines[0]["prev"] is None
    assert [line["prev"] for line in lines[1:]] == [line["hash"] for line in lines[:-1]]
    trail.close()
    assert verify_file(path).events == 3


def test_a_restart_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = _trail(path)
    _write(first, 2)
    first.close()
    second = _trail(path)
    _write(second, 2, start=2)
    second.close()
    lines = _lines(path)
    assert lines[2]["prev"] == lines[1]["hash"]
    assert verify_file(path).events == 4


def test_a_torn_last_line_is_ended_and_named_by_verify(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = _trail(path)
    _write(trail, 2)
    trail.close()
    with path.open("ab") as file:
        file.write(b'{"time":"2023-11-14T22:13:21.000+00:00","event":"object.str')  # a crash
    trail = _trail(path)
    _write(trail, 1, start=9)
    trail.close()
    last = path.read_text().splitlines()[-1]
    assert json.loads(last)["request_id"] == "r9"  # on a line of its own
    with pytest.raises(ChainBroken) as broken:
        verify_file(path)
    assert broken.value.line == 3


@pytest.mark.parametrize("target", [1, 4, 6])
def test_editing_one_line_makes_verify_name_that_line(tmp_path: Path, target: int) -> None:
    path = tmp_path / "audit.jsonl"
    trail = _trail(path)
    _write(trail, 6)
    trail.close()
    lines = path.read_bytes().splitlines(keepends=True)
    lines[target - 1] = lines[target - 1].replace(b'"sub":"alice"', b'"sub":"mallory"')
    path.write_bytes(b"".join(lines))
    with pytest.raises(ChainBroken) as broken:
        verify_file(path)
    assert (broken.value.line, broken.value.path) == (target, path)
    assert "edited" in broken.value.problem


def test_a_removed_or_reordered_line_breaks_the_next(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = _trail(path)
    _write(trail, 5)
    trail.close()
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2] + lines[3:]))
    with pytest.raises(ChainBroken) as broken:
        verify_file(path)
    assert broken.value.line == 3
    assert "removed, inserted or reordered" in broken.value.problem
    path.write_bytes(b"".join([lines[1], lines[0], *lines[2:]]))
    with pytest.raises(ChainBroken) as broken:
        verify_file(path)
    assert broken.value.line == 1  # the second line, moved first, names a prev before it


def test_rotation_by_size_starts_a_file_that_names_the_last_hash(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = _trail(path, max_bytes=1000)
    _write(trail, 12)
    trail.close()
    rotated = sorted(p for p in tmp_path.iterdir() if p != path)
    assert len(rotated) >= 2
    assert all(p.stat().st_size <= 1000 for p in rotated)
    files = [*rotated, path]
    for earlier, later in itertools.pairwise(files):
        first = _lines(later)[0]
        assert first["event"] == "audit.rotated"
        assert first["previous"] == earlier.name
        assert first["prev"] == _lines(earlier)[-1]["hash"]
    events = [line for p in files for line in _lines(p) if line["event"] != "audit.rotated"]
    assert [line["request_id"] for line in events] == [f"r{n}" for n in range(12)]
    report = verify_files(list(reversed(files)))  # any order
    assert f"continues {rotated[-1].name}" in report[0]


def test_a_rotated_file_whose_end_was_cut_is_caught_at_the_join(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = _trail(path, max_bytes=1000)
    _write(trail, 6)
    trail.close()
    rotated = sorted(p for p in tmp_path.iterdir() if p != path)[-1]  # the one path continues
    rotated.write_bytes(b"".join(rotated.read_bytes().splitlines(keepends=True)[:-1]))
    assert verify_file(rotated).events >= 1  # on its own it cannot tell
    with pytest.raises(ChainBroken) as broken:
        verify_files([rotated, path])
    assert (broken.value.path, broken.value.line) == (path, 1)


def test_sighup_follows_a_file_moved_away_by_logrotate(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = _trail(path)
    _write(trail, 2)
    trail.reopen()  # not moved: nothing happens
    _write(trail, 1, start=2)
    moved = tmp_path / "audit.jsonl.1"
    os.rename(path, moved)
    _write(trail, 1, start=3)  # still into the moved file, as logrotate expects
    trail.reopen()
    _write(trail, 1, start=4)
    trail.close()
    assert [line["request_id"] for line in _lines(moved)] == ["r0", "r1", "r2", "r3"]
    first, last = _lines(path)
    assert first["event"] == "audit.rotated" and first["previous"] is None
    assert first["prev"] == _lines(moved)[-1]["hash"]
    assert last["request_id"] == "r4"
    verify_files([moved, path])


def test_a_file_another_process_writes_is_refused(tmp_path: Path) -> None:
    """Two writers on one file would fork its chain (two replicas given one path)."""
    path = tmp_path / "audit.jsonl"
    first = _trail(path)
    with pytest.raises(AuditFileBusy, match="is being written by another process"):
        _trail(path)
    first.close()
    _trail(path).close()  # free again once the first has let go


def test_workers_write_files_of_their_own(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trails = [_trail(path, worker=number) for number in range(2)]
    for trail in trails:
        _write(trail, 2)
        trail.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.w0.jsonl", "audit.w1.jsonl"]
    assert "worker" not in _lines(tmp_path / "audit.w0.jsonl")[0]


def test_on_stdout_each_worker_is_a_chain_among_access_lines(tmp_path: Path) -> None:
    """Two workers' lines interleaved with access lines, as one stdout collects them."""
    capture = tmp_path / "stdout.jsonl"
    lines = []
    for worker in (0, 1):
        prev = None
        for number in range(3):
            fields = {"time": "t", "event": "url.signed", "request_id": f"{worker}-{number}"}
            line, prev = seal({**fields, "worker": worker}, prev)
            lines.append((number, worker, line))
    lines.sort(key=lambda item: item[:2])
    access = b'{"time":"t","route":"r","status":200}'
    capture.write_bytes(b"".join(line + b"\n" + access + b"\n" for _, _, line in lines))
    with pytest.raises(ChainBroken):
        verify_file(capture)  # strict by default: every line must be an audit line
    found = verify_file(capture, mixed=True)
    assert (found.events, found.skipped, len(found.last)) == (6, 6, 2)


def test_stdout_trail_tags_lines_with_the_worker(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    trail = AuditTrail("-", worker=3, clock=lambda: 1.0)
    trail.open()
    trail.record("signin", {"sub": "alice"})
    line = capfdbinary.readouterr().out.splitlines()[0]
    assert json.loads(line)["worker"] == 3
    assert check_line(line).problem is None


def test_a_write_failure_loses_the_event_not_the_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    trail = _trail(path)
    _write(trail, 1)
    assert trail._file is not None
    trail._file.close()  # as a vanished disk would
    _write(trail, 2, start=1)  # no exception
    assert [r.message for r in caplog.records if "events are being lost" in r.message]
    assert len(caplog.records) == 1  # said once, not per event


def test_cli_verify_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "audit.jsonl"
    trail = _trail(path)
    _write(trail, 3)
    trail.close()
    assert main(["audit", "verify", str(path)]) == 0
    assert f"{path}: 3 events, chain intact" in capsys.readouterr().out
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"bytes":1', b'"bytes":1000')
    path.write_bytes(b"".join(lines))
    assert main(["audit", "verify", str(path)]) == 1
    assert f"audit chain broken at {path}:2: " in capsys.readouterr().err
    assert main(["audit", "verify", str(tmp_path / "missing.jsonl")]) == 2


def test_python_m_proxy_audit_verify_needs_no_config(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = _trail(path)
    _write(trail, 1)
    trail.close()
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "audit", "verify", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # no config.yaml here
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "1 events, chain intact" in result.stdout


# --- what a request writes (audit/events.py) and its id (request.py) --------------------------


def _ended(method: str, status: int, **fields: object) -> RequestContext:
    context = RequestContext(method, "/p", "203.0.113.7", id="r1", audited=True)
    context.route, context.status = "files", status
    context.object = ObjectRef("b", "k", CustomerKey.parse("k" * 32))
    for name, value in fields.items():
        setattr(context, name, value)
    return context


def test_a_request_line_names_who_what_and_how_it_ended() -> None:
    context = _ended("GET", 200, sub="alice", iss="https://idp", delivery="stream")
    context.audit("object.streamed", bytes=5, complete=True)
    ((event, line),) = request_events(context)
    assert event == "object.streamed"
    assert line == {
        "request_id": "r1",
        "sub": "alice",
        "iss": "https://idp",
        "client": "203.0.113.7",
        "route": "files",
        "method": "GET",
        "status": 200,
        "bucket": "b",
        "key": "k",
        "delivery": "stream",
        "bytes": 5,
        "complete": True,
    }
    assert "k" * 32 not in json.dumps(line)  # never the customer key


def test_a_refusal_is_its_own_event_and_a_url_in_a_failed_answer_is_none() -> None:
    denied = _ended("GET", 403, reason="claim 'role' missing")
    assert [(e, f["reason"]) for e, f in request_events(denied)] == [
        ("access.denied", "claim 'role' missing")
    ]
    refused = _ended("PUT", 413, reason="upload of 9 bytes over upload.max_bytes")
    assert [e for e, _ in request_events(refused)] == ["upload.refused"]
    failed = _ended("POST", 500, reason="internal error")
    failed.audit("url.signed", expires="2026-01-01T00:00:00Z")
    assert list(request_events(failed)) == []  # the URL never reached anyone


def test_events_are_kept_only_when_the_trail_is_on() -> None:
    context = RequestContext("GET", "/p", None)
    context.audit("url.signed")
    assert context.events is None


@pytest.mark.parametrize(
    ("given", "trusted", "kept"),
    [
        ("abc-123", True, True),
        ("abc-123", False, False),  # a client picks no id of its own
        (None, True, False),
        ("a" * 129, True, False),
        ("a b", True, False),
        ("a\r\nX-Evil: 1", True, False),
        ("x&X-Amz-Signature=1", True, False),  # it goes into URLs
    ],
)
def test_a_request_id_is_taken_only_from_a_trusted_proxy(
    given: str | None, trusted: bool, kept: bool
) -> None:
    made = request_id(given, trusted)
    assert (made == given) is kept
    if not kept:
        assert len(made) == 16 and int(made, 16) >= 0
