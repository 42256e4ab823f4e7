"""Redis going away under a running publisher: no exception in the app, nothing lost, replay delivers once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from producer import AsyncPublisher, Publisher
from producer.spool import spool_files
from tests.publish_support import RedisServer, duplicates, event, queued_event_ids

pytestmark = pytest.mark.redis


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis")
    srv.start()
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        os.kill(srv.proc.pid, signal.SIGCONT)
    srv.stop()


def wait_for(predicate: object, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def direct_publisher(server: RedisServer, tmp_path: Path, **overrides: object) -> Publisher:
    """A direct-mode publisher with short timeouts and breaker, spooling under tmp_path/spool."""
    options: dict[str, object] = {
        "redis_url": server.url,
        "mode": "direct",
        "breaker_open_seconds": 0.2,
        "connect_timeout": 0.5,
        "socket_timeout": 0.5,
        "spool_dir": str(tmp_path / "spool"),
        "handle_sigterm": False,
    }
    options.update(overrides)
    return Publisher(**options)  # type: ignore[arg-type]


def restart_and_replay(server: RedisServer, pub: Publisher, next_event: int, spooled: int) -> list[str]:
    """Start Redis again, publish one more event (which wakes the replay), wait for the `spooled` events to be
    replayed; the event ids then queued."""
    server.start()
    time.sleep(0.25)  # let the breaker's open period pass
    pub.publish(event(next_event))  # goes to Redis, and wakes the replay of the spooled ones
    assert wait_for(lambda: pub.replayed == spooled)
    return queued_event_ids(server.client())


@pytest.mark.slow
def test_redis_stopped_mid_run_loses_nothing_and_replays_once(server: RedisServer, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    pub = Publisher(
        redis_url=server.url,
        mode="buffered",
        flush_interval=0.05,
        batch_size=50,
        breaker_open_seconds=0.2,
        # generous timeouts: the box is shared, and a timeout after Redis applied a batch would only add a
        # (harmless, deduplicated downstream) second copy, which this test counts as a failure
        connect_timeout=0.5,
        socket_timeout=0.5,
        background_timeout=2.0,
        spool_dir=str(spool),
        handle_sigterm=False,
    )
    emitted: list[str] = []
    latencies: list[float] = []

    def emit_phase(start: int, n: int) -> None:
        for i in range(start, start + n):
            ev = event(i)
            t0 = time.perf_counter()
            pub.publish(ev)  # an exception here fails the test: the app must never see one
            latencies.append(time.perf_counter() - t0)
            emitted.append(ev.event_id)
            if i % 50 == 0:
                time.sleep(0.01)

    try:
        emit_phase(0, 1000)
        server.stop()
        emit_phase(1000, 1000)
        assert wait_for(lambda: pub.spooled > 0 and pub.buffered == 0, 10)
        assert spool_files(spool), "events of the outage are on disk"
        server.start()
        emit_phase(2000, 1000)
        pub.flush(timeout=10)
        # the spool is replayed by the publisher's own thread once Redis answers again
        assert wait_for(lambda: pub.replayed == pub.spooled and not spool_files(spool), 20), pub.counters()
        ids = queued_event_ids(server.client())
    finally:
        pub.close()
    assert pub.dropped == 0
    assert pub.spooled > 0
    assert pub.published + pub.spooled == len(emitted)  # every event accepted: enqueued or on disk
    assert pub.replayed == pub.spooled
    assert duplicates(ids) == {}
    assert sorted(ids) == sorted(emitted)
    # the app thread never waits on Redis (its timeouts here are 500 ms); a loaded box may still pause it
    latencies.sort()
    p99, worst = latencies[int(len(latencies) * 0.99)], latencies[-1]
    assert p99 < 0.005, f"publish() p99 {p99 * 1000:.1f} ms on the app thread"
    assert worst < 0.4, f"publish() took {worst * 1000:.1f} ms on the app thread"


@pytest.mark.slow
def test_direct_mode_spools_while_redis_is_down_then_replays(server: RedisServer, tmp_path: Path) -> None:
    pub = direct_publisher(server, tmp_path)
    try:
        pub.publish(event(0))
        server.stop()
        for i in range(1, 51):
            pub.publish(event(i))
        assert (pub.published, pub.spooled) == (1, 50)
        ids = restart_and_replay(server, pub, 51, 50)
    finally:
        pub.close()
    assert duplicates(ids) == {}
    assert sorted(ids) == [f"ev_pub_{i:06d}" for i in range(52)]


@pytest.mark.slow
def test_a_frozen_redis_never_stalls_the_app_thread(server: RedisServer, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    pub = Publisher(
        redis_url=server.url,
        mode="direct",
        breaker_open_seconds=0.3,
        connect_timeout=0.05,
        socket_timeout=0.05,
        background_timeout=2.0,
        spool_dir=str(spool),
        handle_sigterm=False,
    )
    assert server.proc is not None
    try:
        os.kill(server.proc.pid, signal.SIGSTOP)  # accepts connections, answers nothing
        t0 = time.perf_counter()
        worst = 0.0
        for i in range(100):
            t1 = time.perf_counter()
            pub.publish(event(i))
            worst = max(worst, time.perf_counter() - t1)
        total = time.perf_counter() - t0
        assert pub.spooled == 100
        # a socket timeout now and then, the breaker keeps Redis out of the path in between
        assert worst < 0.5, worst
        assert total < 3.0, total
        spooled_ids = {json.loads(line)["event_id"] for f in spool_files(spool) for line in f.read_text().splitlines()}
        assert len(spooled_ids) == 100
        os.kill(server.proc.pid, signal.SIGCONT)
        # nothing more is published: the publisher's thread replays once Redis answers again
        assert wait_for(lambda: pub.replayed == 100 and not spool_files(spool)), pub.counters()
        ids = queued_event_ids(server.client())
    finally:
        pub.close()
    # A call that timed out had already written its job: the thawed Redis applies it, and the spool holds
    # it too. That second copy is the at-least-once price of never waiting (the worker counts the event
    # id once). Only such events may appear twice, none more, none missing.
    assert sorted(set(ids)) == [f"ev_pub_{i:06d}" for i in range(100)]
    assert set(duplicates(ids)) <= spooled_ids
    assert all(n == 2 for n in duplicates(ids).values())


@pytest.mark.slow
def test_async_publish_keeps_redis_io_off_the_event_loop(server: RedisServer, tmp_path: Path) -> None:
    pub = AsyncPublisher(
        redis_url=server.url,
        mode="direct",
        breaker_open_seconds=0.01,  # every call tries the frozen Redis and waits out the socket timeout
        connect_timeout=0.3,
        socket_timeout=0.3,
        spool_dir=str(tmp_path / "spool"),
        handle_sigterm=False,
    )
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGSTOP)

    async def main() -> float:
        gaps: list[float] = []
        done = asyncio.Event()

        async def heartbeat() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        beat = asyncio.create_task(heartbeat())
        t0 = time.perf_counter()
        for i in range(3):
            await pub.publish(event(i))
        elapsed = time.perf_counter() - t0
        done.set()
        await beat
        assert elapsed > 0.25  # a call really did wait on Redis...
        return max(gaps)

    try:
        worst_gap = asyncio.run(main())
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
        pub.publisher.close()
    assert pub.publisher.spooled == 3
    assert worst_gap < 0.15, f"the event loop stalled {worst_gap * 1000:.0f} ms"  # ...but not on the loop


@pytest.mark.slow
def test_spooled_events_are_replayed_when_redis_returns_without_further_publishing(
    server: RedisServer, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    pub = direct_publisher(server, tmp_path, flush_interval=0.1)
    try:
        server.stop()
        for i in range(10):
            pub.publish(event(i))
        assert pub.spooled == 10
        server.start()
        # the app publishes nothing more: the publisher's thread notices Redis is back on its own
        assert wait_for(lambda: pub.replayed == 10 and not spool_files(spool))
        ids = queued_event_ids(server.client())
    finally:
        pub.close()
    assert sorted(ids) == [f"ev_pub_{i:06d}" for i in range(10)]


@pytest.mark.slow
def test_redis_gone_between_two_groups_of_jobs_spools_exactly_the_rest(server: RedisServer, tmp_path: Path) -> None:
    # the publisher cuts jobs as it sends them: Redis stops after the first group of 8 jobs went, while the
    # second is cut; only what Redis did not take is spooled, and the replay delivers it once
    pub = direct_publisher(server, tmp_path, batch_size=2)
    first_group = 8 * 2

    class StopsRedis(list[str]):
        def __iter__(self) -> Iterator[str]:
            for i, text in enumerate(super().__iter__()):
                if i == first_group + 1:  # the first group is in Redis: the next text is being cut
                    server.stop()
                yield text

    texts = StopsRedis(event(i).model_dump_json() for i in range(40))
    try:
        pub._deliver(texts, patient=True)
        assert (pub.published, pub.spooled) == (first_group, 40 - first_group)
        ids = restart_and_replay(server, pub, 40, 40 - first_group)
    finally:
        pub.close()
    assert duplicates(ids) == {}
    assert sorted(ids) == [f"ev_pub_{i:06d}" for i in range(41)]
