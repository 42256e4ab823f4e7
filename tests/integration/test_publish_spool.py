"""The spool: one locked file per process, replay that never steals a live file, torn last lines skipped."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from producer import Publisher
from producer.spool import Spool, destination_tag, spool_files
from tests.publish_support import event, queued_event_ids

pytestmark = pytest.mark.redis

DEAD_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture
def pubs(redis_url: str, tmp_path: Path) -> Iterator[list[Publisher]]:
    made: list[Publisher] = []
    yield made
    for pub in made:
        pub.close()


def make(pubs: list[Publisher], url: str, spool: Path, **kw: object) -> Publisher:
    pub = Publisher(redis_url=url, spool_dir=str(spool), mode="direct", handle_sigterm=False, **kw)
    pubs.append(pub)
    return pub


def write_spool_file(spool: Path, name: str, lines: list[str], tail: str = "") -> Path:
    spool.mkdir(parents=True, exist_ok=True)
    path = spool / name
    path.write_text("".join(line + "\n" for line in lines) + tail)
    return path


def test_replay_skips_a_torn_last_line_and_removes_the_file(
    pubs: list[Publisher], redis_url: str, tmp_path: Path, rconn: redis.Redis
) -> None:
    spool = tmp_path / "spool"
    lines = [event(i).model_dump_json() for i in range(3)]
    torn = event(3).model_dump_json()[:57]  # a crash in the middle of a write
    pub = make(pubs, redis_url, spool)
    path = write_spool_file(spool, f"spool-{pub.destination}-4242-deadbeef0000.jsonl", lines, tail=torn)
    report = pub.replay()
    assert report.as_dict() == {
        "files": 1,
        "events": 3,
        "torn_lines": 1,
        "bad_lines": 0,
        "locked_files": 0,
        "failed_files": 0,
    }
    assert not path.exists()
    assert queued_event_ids(rconn) == ["ev_pub_000000", "ev_pub_000001", "ev_pub_000002"]
    assert pub.replayed == 3


def test_replay_reports_a_corrupt_line_and_keeps_the_others(
    pubs: list[Publisher], redis_url: str, tmp_path: Path, rconn: redis.Redis
) -> None:
    spool = tmp_path / "spool"
    pub = make(pubs, redis_url, spool)
    texts = [event(1).model_dump_json(), "{not json", event(2).model_dump_json()]
    write_spool_file(spool, f"spool-{pub.destination}-1-aa.jsonl", texts)
    report = pub.replay()
    assert (report.events, report.bad_lines, report.files) == (2, 1, 1)
    assert queued_event_ids(rconn) == ["ev_pub_000001", "ev_pub_000002"]


def test_each_process_writes_its_own_locked_file(pubs: list[Publisher], tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    a = make(pubs, DEAD_REDIS, spool)
    b = make(pubs, DEAD_REDIS, spool)
    a.publish(event(1))
    b.publish(event(2))
    pa, pb = a._spool.path, b._spool.path
    assert pa is not None
    assert pb is not None
    assert pa != pb
    assert pa.name.startswith(f"spool-{a.destination}-{os.getpid()}-")
    assert pa.name.endswith(".jsonl")
    assert sorted(spool_files(spool)) == sorted([pa, pb])
    with pa.open("rb") as fh, pytest.raises(BlockingIOError):
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # the writer holds it


def test_replay_never_takes_a_live_writers_file(
    pubs: list[Publisher], redis_url: str, tmp_path: Path, rconn: redis.Redis
) -> None:
    spool = tmp_path / "spool"
    writer = make(pubs, DEAD_REDIS, spool)
    writer.publish(event(1))
    writer.publish(event(2))
    live = writer._spool.path
    assert live is not None
    replayer = make(pubs, redis_url, spool)
    report = replayer.replay(all_destinations=True)
    assert (report.locked_files, report.events) == (1, 0)
    assert live.exists()
    assert queued_event_ids(rconn) == []
    writer.publish(event(3))  # the writer still appends to its file
    writer.close()  # releases the file
    report = replayer.replay(all_destinations=True)
    assert (report.files, report.events, report.locked_files) == (1, 3, 0)
    assert queued_event_ids(rconn) == ["ev_pub_000001", "ev_pub_000002", "ev_pub_000003"]
    assert spool_files(spool) == []


def test_a_failed_replay_keeps_the_file(pubs: list[Publisher], tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    pub = make(pubs, DEAD_REDIS, spool)
    path = write_spool_file(spool, f"spool-{pub.destination}-7-bb.jsonl", [event(1).model_dump_json()])
    report = pub.replay()
    assert (report.failed_files, report.files, report.events) == (1, 0, 0)
    assert path.exists()
    assert path.read_text() == event(1).model_dump_json() + "\n"


def test_spool_appends_whole_lines(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s")
    spool.append(["a", "b"])
    spool.append(["c"])
    path = spool.path
    assert path is not None
    assert path.read_bytes() == b"a\nb\nc\n"
    assert spool.seal() == path
    assert spool.path is None
    spool.append(["d"])
    assert spool.path not in (None, path)  # a sealed file is never appended again
    spool.close()


def test_automatic_replay_takes_only_files_meant_for_its_own_redis_and_queue(
    pubs: list[Publisher], redis_url: str, tmp_path: Path, rconn: redis.Redis
) -> None:
    spool = tmp_path / "spool"
    other_queue = make(pubs, DEAD_REDIS, spool, queue="another_app")
    other_queue.publish(event(1))
    other_queue.close()
    same = make(pubs, DEAD_REDIS, spool)
    same.publish(event(2))
    same.close()
    pub = make(pubs, redis_url, spool)
    assert same.destination != other_queue.destination
    report = pub.replay()
    # DEAD_REDIS is another server: none of these files is this publisher's to send
    assert (report.files, report.events) == (0, 0)
    assert len(spool_files(spool)) == 2
    report = pub.replay(all_destinations=True)  # what `usagebill spool replay` does
    assert (report.files, report.events) == (2, 2)
    assert sorted(queued_event_ids(rconn)) == ["ev_pub_000001", "ev_pub_000002"]


def test_destination_tag_ignores_credentials_and_defaults() -> None:
    assert destination_tag("redis://127.0.0.1:6379/0", "q") == destination_tag("redis://:pw@127.0.0.1", "q")
    assert destination_tag("redis://127.0.0.1:6379/0", "q") != destination_tag("redis://127.0.0.1:6379/1", "q")
    assert destination_tag("redis://127.0.0.1:6379/0", "q") != destination_tag("redis://127.0.0.1:6379/0", "r")
