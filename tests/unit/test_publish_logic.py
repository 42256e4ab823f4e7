"""Pure logic of publishing: batch cutting, spool line parsing, ingest line checks (no services)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import cast

import pytest

from producer import Publisher
from producer import spool as spool_module
from producer.spool import ReplayReport, read_lines
from tests.publish_support import event
from worker.commands.ingest import check_line


def _publisher(**kw: object) -> Publisher:
    return Publisher(
        redis_url="redis://127.0.0.1:1/0", spool_dir="/nonexistent/never-created", handle_sigterm=False, **kw
    )


def test_batches_respect_count_and_bytes_and_keep_order() -> None:
    pub = _publisher(batch_size=3, batch_max_bytes=2000)
    texts = [json.dumps({"event_id": f"e{i}", "pad": "x" * 300}) for i in range(10)]
    batches = pub._batches(texts)
    assert [t for b in batches for t in b] == texts
    assert all(len(b) <= 3 for b in batches)
    assert all(sum(len(json.dumps(t)) + 2 for t in b) <= 2000 for b in batches)
    pub.close()


def test_batches_are_cut_as_they_are_sent() -> None:
    # the first job leaves before the rest of a large array is cut (cutting 100k events took ~0.2 s)
    pub = _publisher(batch_size=3)
    read: list[int] = []

    def texts() -> Iterator[str]:
        for i in range(10):
            read.append(i)
            yield json.dumps({"event_id": f"e{i}", "note": 'quote " backslash \\ \u00e9 \n'})

    batches = pub._iter_batches(cast(Sequence[str], texts()))
    assert next(batches) == [
        json.dumps({"event_id": f"e{i}", "note": 'quote " backslash \\ \u00e9 \n'}) for i in range(3)
    ]
    assert read == [0, 1, 2, 3]  # the fourth text starts the next batch, nothing further was read
    pub.close()


def test_a_batch_counts_each_text_as_its_json_string() -> None:
    # what the job's JSON carries: the text quoted and escaped (non-ASCII as \u escapes), plus ", "
    text = json.dumps({"event_id": "e", "note": '\u00e9\U0001f600 " \\ \x01'}, ensure_ascii=False)
    n = len(json.dumps(text)) + 2
    assert n > len(text) + 2
    pub = _publisher(batch_size=100, batch_max_bytes=2 * n)
    assert pub._batches([text] * 5) == [[text] * 2, [text] * 2, [text]]
    pub.close()


def test_an_event_larger_than_the_byte_bound_travels_alone() -> None:
    pub = _publisher(batch_max_bytes=1024)
    big = json.dumps({"event_id": "big", "pad": "y" * 5000})
    assert pub._batches(["a", big, "b"]) == [["a"], [big], ["b"]]
    pub.close()


def test_read_lines_reports_torn_tail_and_bad_lines() -> None:
    report = ReplayReport()
    texts = read_lines(b'{"a":1}\n\nnot json\n{"b":2}\n{"c":', "f", report)
    assert texts == ['{"a":1}', '{"b":2}']
    assert (report.torn_lines, report.bad_lines) == (1, 1)


def test_read_lines_of_a_clean_file() -> None:
    report = ReplayReport()
    assert read_lines(b'{"a":1}\n', "f", report) == ['{"a":1}']
    assert (report.torn_lines, report.bad_lines) == (0, 0)


def test_check_line_reasons() -> None:
    good = event(1).model_dump_json()
    obj = json.loads(good)
    no_id = {k: v for k, v in obj.items() if k != "event_id"}
    assert check_line(good) is None
    assert str(check_line("nope")).startswith("not JSON")
    assert check_line("3") == "not a JSON object"
    assert check_line(json.dumps(no_id)) == "no event_id"
    assert str(check_line(json.dumps({**obj, "event_id": ""}))).startswith("invalid event_id")
    assert str(check_line(json.dumps({**obj, "event_id": 7}))).startswith("invalid event_id")
    # no UTC offset: the validation error names the field
    assert str(check_line(json.dumps({**obj, "occurred_at": "2026-01-01T00:00:00"}))).startswith("occurred_at")


def test_replay_streams_a_file_in_chunks_and_keeps_it_when_a_chunk_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spool_module, "REPLAY_CHUNK", 2)
    path = tmp_path / "spool-any-1-aa.jsonl"
    path.write_text("".join(json.dumps({"event_id": f"e{i}"}) + "\n" for i in range(5)))
    sent: list[list[str]] = []

    def failing_second(chunk: Sequence[str]) -> None:
        if len(sent) == 1:
            raise ConnectionError("Redis went away")
        sent.append(list(chunk))

    report = spool_module.replay_dir(tmp_path, failing_second)
    assert (report.failed_files, report.files, report.events, report.events_resent_later) == (1, 0, 0, 2)
    assert path.exists()

    sent.clear()
    report = spool_module.replay_dir(tmp_path, lambda chunk: sent.append(list(chunk)))
    assert [len(c) for c in sent] == [2, 2, 1]
    assert (report.files, report.events) == (1, 5)
    assert not path.exists()


def test_an_item_that_is_not_a_str_is_cut_as_before() -> None:
    # the API takes JSON texts; a dict item still goes (the worker parks it with its reason), counted as
    # json.dumps counts it
    pub = _publisher(batch_size=10, batch_max_bytes=60)
    item = {"event_id": "d", "pad": "z" * 20}
    assert len(json.dumps(item)) + 2 > 30  # so two of them do not fit in 60 bytes
    assert pub._batches(cast(Sequence[str], [item, item])) == [[item], [item]]
    pub.close()
