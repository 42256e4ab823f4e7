"""Publisher against the real Redis: direct and buffered modes, batch bounds, the job contract, drops."""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import producer
from producer import Publisher, jobspec
from producer import publisher as publisher_module
from tests.publish_support import event, queued_event_ids, queued_jobs

pytestmark = pytest.mark.redis


@pytest.fixture
def make_publisher(redis_url: str, tmp_path: Path) -> Iterator[type[Publisher]]:
    made: list[Publisher] = []

    def make(**overrides: object) -> Publisher:
        options: dict[str, object] = {
            "redis_url": redis_url,
            "spool_dir": str(tmp_path / "spool"),
            "handle_sigterm": False,
            "socket_timeout": 2.0,
            "connect_timeout": 2.0,
        }
        options.update(overrides)
        pub = Publisher(**options)
        made.append(pub)
        return pub

    yield make  # type: ignore[misc]
    for pub in made:
        pub.close()


def wait_for(predicate: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_direct_mode_enqueues_each_event_before_publish_returns(make_publisher, rconn: redis.Redis) -> None:
    pub = make_publisher(mode="direct")
    events = [event(i) for i in range(3)]
    for i, ev in enumerate(events, start=1):
        pub.publish(ev)
        assert len(queued_jobs(rconn)) == i  # already on the queue when publish() returned
    jobs = queued_jobs(rconn)
    assert [job.args for job in jobs] == [[[ev.model_dump_json()]] for ev in events]
    assert pub.counters() == {"published": 3, "spooled": 0, "dropped": 0, "replayed": 0, "buffered": 0}


def test_jobs_follow_the_contract(make_publisher, rconn: redis.Redis) -> None:
    pub = make_publisher(mode="direct")
    pub.publish(event(1))
    (job,) = queued_jobs(rconn)
    assert job.func_name == jobspec.INGEST_FUNC
    assert job.kwargs == {}
    assert job.origin == jobspec.DEFAULT_QUEUE
    assert job.timeout == jobspec.JOB_TIMEOUT
    assert job.result_ttl == jobspec.RESULT_TTL
    assert job.failure_ttl == jobspec.FAILURE_TTL
    assert job.retries_left == jobspec.RETRY_MAX
    assert job.retry_intervals == list(jobspec.RETRY_INTERVALS)
    # the stored payload is JSON (rq's JSONSerializer), never pickle
    raw = rconn.hget(f"rq:job:{job.id}", "data")
    assert isinstance(raw, bytes)
    func, _instance, args, kwargs = json.loads(zlib.decompress(raw))
    assert (func, args, kwargs) == (jobspec.INGEST_FUNC, [[event(1).model_dump_json()]], {})


def test_queue_name_comes_from_the_config(make_publisher, rconn: redis.Redis) -> None:
    pub = make_publisher(mode="direct", queue="usagebill_other")
    pub.publish(event(1))
    assert queued_event_ids(rconn, "usagebill_other") == ["ev_pub_000001"]
    assert queued_event_ids(rconn) == []


def test_buffered_mode_flushes_on_time(make_publisher, rconn: redis.Redis) -> None:
    pub = make_publisher(mode="buffered", flush_interval=0.3)
    for i in range(3):
        pub.publish(event(i))
    assert queued_jobs(rconn) == []  # held in memory, not sent by the app thread
    assert pub.buffered == 3
    assert wait_for(lambda: len(queued_event_ids(rconn)) == 3)
    assert queued_event_ids(rconn) == [f"ev_pub_{i:06d}" for i in range(3)]
    assert len(queued_jobs(rconn)) == 1  # one job carries the batch


def test_buffered_mode_flushes_on_size_and_batches_are_bounded(make_publisher, rconn: redis.Redis) -> None:
    pub = make_publisher(mode="buffered", flush_interval=3600, batch_size=10)
    for i in range(25):
        pub.publish(event(i))
    # no timer will fire for an hour: only the size trigger can have sent these
    assert wait_for(lambda: len(queued_event_ids(rconn)) >= 10)
    assert pub.flush(timeout=5)
    ids = queued_event_ids(rconn)
    assert ids == [f"ev_pub_{i:06d}" for i in range(25)]
    assert all(1 <= len(job.args[0]) <= 10 for job in queued_jobs(rconn))
    assert pub.published == 25


def test_batches_are_bounded_by_bytes(make_publisher, rconn: redis.Redis) -> None:
    pub = make_publisher(mode="direct", batch_max_bytes=1200)
    texts = [event(i).model_dump_json() for i in range(5)]
    assert 400 < len(json.dumps(texts[0])) < 590  # so two fit in a job and three do not
    pub.publish_many(texts)
    jobs = queued_jobs(rconn)
    assert [len(job.args[0]) for job in jobs] == [2, 2, 1]
    assert all(len(json.dumps(job.args[0])) <= 1200 for job in jobs)
    # described by their size: rq would otherwise build the description from the repr of the whole batch
    assert [job.description for job in jobs] == [f"worker.jobs.ingest_batch(<{n} events>)" for n in (2, 2, 1)]
    assert [t for job in jobs for t in job.args[0]] == texts
    # rq's payload format (rq read the jobs back above), compressed at zlib level 1: its header says so
    stored = [rconn.hget(f"rq:job:{job.id}", "data") for job in jobs]
    assert all(isinstance(raw, bytes) and raw[:2] == b"\x78\x01" for raw in stored)
    assert [json.loads(zlib.decompress(raw))[2][0] for raw in stored if isinstance(raw, bytes)] == [
        job.args[0] for job in jobs
    ]


def test_enqueue_sends_the_first_jobs_before_cutting_the_rest(make_publisher, rconn: redis.Redis) -> None:
    # a large array goes a group of jobs at a time: the first group is in Redis (where workers take it)
    # before the texts after it are even read
    pub = make_publisher(mode="direct", batch_size=2)
    texts = [event(i).model_dump_json() for i in range(40)]
    read = 0
    queued_when_read: dict[int, int] = {}

    def reading() -> Iterator[str]:
        nonlocal read
        for text in texts:
            queued_when_read[read] = len(queued_jobs(rconn))
            read += 1
            yield text

    steps = pub._enqueue_steps(reading(), patient=True)  # type: ignore[arg-type]
    first = publisher_module._JOBS_PER_ROUND_TRIP * 2
    assert next(steps) == first
    assert read == first + 1  # the text that opened the next job, no further
    assert len(queued_jobs(rconn)) == publisher_module._JOBS_PER_ROUND_TRIP
    assert list(steps) == [2 * first, len(texts)]
    assert queued_when_read[first + 1] == publisher_module._JOBS_PER_ROUND_TRIP
    assert queued_event_ids(rconn) == [json.loads(t)["event_id"] for t in texts]


def test_full_buffer_drops_are_counted_and_reported(
    make_publisher, rconn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    pub = make_publisher(mode="buffered", flush_interval=3600, buffer_max=10)
    with caplog.at_level(logging.WARNING, logger="usagebill.producer"):
        for i in range(15):
            pub.publish(event(i))
    assert pub.dropped == 5
    assert pub.buffered == 10
    assert any("dropped" in r.getMessage() and "buffer full" in r.getMessage() for r in caplog.records)
    pub.flush()
    assert queued_event_ids(rconn) == [f"ev_pub_{i:06d}" for i in range(10)]
    assert pub.counters()["published"] == 10


def test_unreachable_redis_spools_without_raising(make_publisher, tmp_path: Path) -> None:
    # port 1: connection refused at once
    pub = make_publisher(mode="direct", redis_url="redis://127.0.0.1:1/0")
    pub.publish(event(1))
    pub.publish(event(2))
    assert pub.spooled == 2
    assert pub.published == 0
    path = pub._spool.path
    assert path is not None
    assert path.read_text().splitlines() == [event(1).model_dump_json(), event(2).model_dump_json()]


def test_unwritable_spool_and_no_redis_counts_drops(make_publisher, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    pub = make_publisher(mode="direct", redis_url="redis://127.0.0.1:1/0", spool_dir=str(blocker / "spool"))
    pub.publish(event(1))  # must not raise
    assert pub.dropped == 1
    assert pub.spooled == 0


def test_emit_uses_the_configured_default_publisher(redis_url: str, tmp_path: Path, rconn: redis.Redis) -> None:
    pub = producer.configure(redis_url=redis_url, mode="direct", spool_dir=str(tmp_path), handle_sigterm=False)
    try:
        assert producer.get_publisher() is pub
        producer.emit(event(7))
        assert queued_event_ids(rconn) == ["ev_pub_000007"]
    finally:
        pub.close()
        publisher_module._default = None


def test_config_reads_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://example.invalid:6379/3")
    monkeypatch.setenv("USAGEBILL_QUEUE", "q2")
    monkeypatch.setenv("USAGEBILL_PUBLISH_MODE", "direct")
    monkeypatch.setenv("USAGEBILL_SPOOL_DIR", str(tmp_path))
    config = producer.PublisherConfig()
    assert (config.redis_url, config.queue, config.mode, config.spool_dir) == (
        "redis://example.invalid:6379/3",
        "q2",
        "direct",
        str(tmp_path),
    )
    assert config.connect_timeout <= 0.1
    assert config.socket_timeout <= 0.1
