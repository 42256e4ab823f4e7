"""Publish usage events onto the rq ingest queue, direct or buffered, spooling to disk when Redis is away.

`Publisher.publish()` never raises into app code and never waits long on Redis: connect and socket
timeouts are tens of milliseconds, and after a failure a circuit breaker keeps Redis out of the path
for a while. An event is *accepted* once it is enqueued in Redis or written (fsync'd) to this
process's spool file; spooled events are replayed automatically when Redis answers again, and by
`usagebill spool replay`. Every event carries its `event_id`, so any replay is safe.

Modes: `direct` enqueues each event before `publish()` returns; `buffered` appends to a bounded
in-memory buffer that a background thread flushes by size and time (plus `flush()`, at interpreter
exit and on SIGTERM). A full buffer drops the new event and counts it (`dropped`), logging a warning.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import json
import logging
import os
import signal
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis import ConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.retry import Retry as RedisRetry
from rq import Queue, Retry

from producer import jobspec
from producer.event import UsageEvent
from producer.spool import ReplayReport, Spool, destination_tag, replay_dir

logger = logging.getLogger("usagebill.producer")

Mode = Literal["direct", "buffered"]
#: jobs per MULTI/EXEC when several batches leave at once
_JOBS_PER_ROUND_TRIP = 8
#: a text as a JSON string (quoted, escaped): what json.dumps returns for a str, without its dispatch
_json_string: Callable[[str], str] = json.encoder.encode_basestring_ascii


class PublisherConfig(BaseSettings):
    """How a publisher reaches Redis and where it spools. Each field reads its environment variable."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    redis_url: str = Field("redis://127.0.0.1:6379/0", alias="REDIS_URL", description="Redis of the ingest queue.")
    queue: str = Field(jobspec.DEFAULT_QUEUE, alias="USAGEBILL_QUEUE", description="Name of the rq ingest queue.")
    mode: Mode = Field(
        "buffered", alias="USAGEBILL_PUBLISH_MODE", description="direct: enqueue before publish() returns."
    )
    batch_size: int = Field(1000, alias="USAGEBILL_BATCH_SIZE", ge=1, le=100_000, description="Events per job.")
    batch_max_bytes: int = Field(
        4_000_000, alias="USAGEBILL_BATCH_MAX_BYTES", ge=1024, description="Bytes of event JSON per job at most."
    )
    flush_interval: float = Field(
        1.0, alias="USAGEBILL_FLUSH_INTERVAL", gt=0, description="Seconds between background flushes (buffered)."
    )
    buffer_max: int = Field(
        100_000, alias="USAGEBILL_BUFFER_MAX", ge=1, description="Events held in memory at most; more are dropped."
    )
    spool_dir: str = Field(
        "~/.usagebill/spool", alias="USAGEBILL_SPOOL_DIR", description="Directory of the durable spool files."
    )
    connect_timeout: float = Field(
        0.05, alias="USAGEBILL_REDIS_CONNECT_TIMEOUT", gt=0, description="Seconds to connect to Redis."
    )
    socket_timeout: float = Field(
        0.05, alias="USAGEBILL_REDIS_SOCKET_TIMEOUT", gt=0, description="Seconds to wait on one Redis reply."
    )
    background_timeout: float = Field(
        0.5,
        alias="USAGEBILL_REDIS_BACKGROUND_TIMEOUT",
        gt=0,
        description="Connect and socket timeout of the Redis I/O done off the app thread (flushes, replays).",
    )
    breaker_open_seconds: float = Field(
        2.0, alias="USAGEBILL_BREAKER_SECONDS", gt=0, description="Seconds Redis is left alone after a failure."
    )
    exit_flush_timeout: float = Field(
        5.0, alias="USAGEBILL_EXIT_FLUSH_TIMEOUT", ge=0, description="Seconds a flush at exit or SIGTERM may take."
    )
    handle_sigterm: bool = Field(
        True, alias="USAGEBILL_HANDLE_SIGTERM", description="Flush on SIGTERM, then chain to the previous handler."
    )


class _Breaker:
    """Closed: try Redis. Open: skip Redis until `open_until`, then let one attempt through (half-open)."""

    def __init__(self, open_seconds: float) -> None:
        self.open_seconds = open_seconds
        self.open_until = 0.0
        self.failures = 0

    def allows(self) -> bool:
        return time.monotonic() >= self.open_until

    @property
    def is_open(self) -> bool:
        return self.failures > 0

    def failed(self) -> None:
        self.failures += 1
        self.open_until = time.monotonic() + self.open_seconds

    def succeeded(self) -> bool:
        """Record a success; True when this closes a breaker that was open (Redis is back)."""
        was_open = self.failures > 0
        self.failures = 0
        self.open_until = 0.0
        return was_open


class Publisher:
    """Publishes usage events as rq jobs carrying batches (JSON serializer). Thread-safe; fork-safe."""

    def __init__(self, config: PublisherConfig | None = None, **overrides: Any) -> None:
        base = config if config is not None else PublisherConfig()
        self.config = base.model_copy(update=overrides) if overrides else base
        self.spool_dir = Path(self.config.spool_dir).expanduser()
        #: names this publisher's spool files: automatic replay takes only files meant for the same Redis and queue
        self.destination = destination_tag(self.config.redis_url, self.config.queue)
        self._closed = False
        self._init_state()
        _live.add(self)
        if self.config.handle_sigterm:
            _install_sigterm_handler()

    # -- state, reset after fork -------------------------------------------------------------------------------

    def _init_state(self) -> None:
        self.pid = os.getpid()
        self.published = 0
        self.spooled = 0
        self.dropped = 0
        self.replayed = 0
        self._buffer: deque[str] = deque()
        self._send_lock = threading.Lock()  # one flush at a time: batches leave in order
        self._state_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._replay_thread: threading.Thread | None = None
        self._replay_wanted = True  # look at the spool dir once at start: a dead process may have left files
        self._breaker = _Breaker(self.config.breaker_open_seconds)
        # two pools: tight timeouts where an app thread waits (direct mode), patient ones for the background
        # thread and explicit flushes, where a slow reply is better than a second copy of a batch
        self._conns: dict[bool, tuple[Redis, Queue]] = {}
        self._spool = Spool(self.spool_dir, self.destination)
        self._last_drop_log = 0.0
        self._retry = Retry(max=jobspec.RETRY_MAX, interval=list(jobspec.RETRY_INTERVALS))

    def _after_fork_in_child(self) -> None:
        # the parent's buffer is the parent's to send; its thread does not exist here; its sockets and its
        # spool lock must not be shared
        spool = self._spool
        self._init_state()
        spool.reset_after_fork()

    # -- public API --------------------------------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self.config.mode

    @property
    def buffered(self) -> int:
        """Events waiting in memory."""
        return len(self._buffer)

    def counters(self) -> dict[str, int]:
        """Counters since this process started publishing (a forked child starts at zero)."""
        return {
            "published": self.published,
            "spooled": self.spooled,
            "dropped": self.dropped,
            "replayed": self.replayed,
            "buffered": len(self._buffer),
        }

    #: the same counters under the other name callers use
    stats = counters

    def publish(self, event: UsageEvent) -> None:
        """Accept one event. Never raises: a failure to publish becomes spooling or a counted drop."""
        try:
            text = event.model_dump_json()
        except Exception:
            self._count_drop(1, "event could not be serialized")
            return
        self.publish_text(text)

    def publish_text(self, text: str) -> None:
        """Accept one event given as its JSON text (already validated by the caller). Never raises."""
        if os.getpid() != self.pid:  # forked by a path that skipped the at-fork hook
            self._after_fork_in_child()
        if self._closed:
            self._count_drop(1, "publisher is closed")
            return
        if self.config.mode == "direct":
            self._deliver([text])
            return
        if len(self._buffer) >= self.config.buffer_max:
            self._count_drop(1, "buffer full")
            return
        self._buffer.append(text)
        if self._thread is None:
            self._start_thread()
        elif len(self._buffer) >= self.config.batch_size:
            self._wake.set()

    def publish_many(self, texts: Sequence[str]) -> None:
        """Enqueue (or spool) these events now, in batches, whatever the mode. Never raises."""
        if os.getpid() != self.pid:
            self._after_fork_in_child()
        self._deliver(list(texts))

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Send what is buffered now. True when the buffer was emptied (sent or spooled) within the timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        acquired = self._send_lock.acquire(timeout=-1 if timeout is None else max(timeout, 0))
        if not acquired:
            return False
        try:
            self._drain(deadline)
        finally:
            self._send_lock.release()
        return not self._buffer

    def ping(self) -> None:
        """Check that Redis answers within the configured timeouts; raises the Redis error otherwise."""
        redis, _ = self._connection(patient=True)
        redis.ping()

    def replay(self, all_destinations: bool = False) -> ReplayReport:
        """Replay the spool directory now (this process's file included) into this publisher's queue.

        Only files spooled for this publisher's Redis and queue, unless `all_destinations` (what
        `usagebill spool replay` does: its user names the Redis).
        """
        self._spool.seal()
        report = replay_dir(self.spool_dir, self.enqueue, tag=None if all_destinations else self.destination)
        self.replayed += report.events
        if report.failed_files:
            self._breaker.failed()
        return report

    def close(self, timeout: float | None = 10.0) -> None:
        """Flush, stop the background thread, release the spool file and the Redis connections."""
        if self._closed:
            return
        self.flush(timeout)
        self._closed = True
        self._stop.set()
        self._wake.set()
        for thread in (self._thread, self._replay_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout)
        if self._buffer:  # the flush timed out: whatever is left still goes to disk
            self._spool_texts(self._take_all(), "closing")
        if self._spool.pending and self._probe():
            # one last chance to hand this process's spool to Redis; if it fails the files stay for a replay
            with contextlib.suppress(Exception):
                self.replay()
        self._spool.close()
        if self.dropped:
            logger.warning("usagebill publisher closed: %d events were dropped (buffer full)", self.dropped)
        for redis, _ in self._conns.values():
            with contextlib.suppress(Exception):
                redis.connection_pool.disconnect()
        _live.discard(self)

    # -- sending -----------------------------------------------------------------------------------------------

    def _connection(self, patient: bool = False) -> tuple[Redis, Queue]:
        conn = self._conns.get(patient)
        if conn is None:
            cfg = self.config
            pool = ConnectionPool.from_url(
                cfg.redis_url,
                socket_connect_timeout=cfg.background_timeout if patient else cfg.connect_timeout,
                socket_timeout=cfg.background_timeout if patient else cfg.socket_timeout,
                # no retries inside redis-py: a failed call is spooled at once and the breaker opens
                retry=RedisRetry(NoBackoff(), 0),
            )
            redis = Redis(connection_pool=pool)
            queue = Queue(
                cfg.queue, connection=redis, serializer=jobspec.PayloadSerializer, job_class=jobspec.PublishedJob
            )
            conn = self._conns[patient] = (redis, queue)
        return conn

    def _batches(self, texts: Sequence[str]) -> list[jobspec.EncodedBatch]:
        return list(self._iter_batches(texts))

    def _iter_batches(self, texts: Sequence[str]) -> Iterator[jobspec.EncodedBatch]:
        # a batch at a time: the first jobs are in Redis (and taken by the workers) while the rest is cut.
        # Each text is measured as the job's JSON carries it (quoted, escaped, plus ", "; an item that is not
        # a str, as before), and that JSON form is kept: the job's payload is joined from it (jobspec)
        size, max_bytes = self.config.batch_size, self.config.batch_max_bytes
        current: list[str] = []
        encoded: list[str] = []
        current_bytes = 0
        for text in texts:
            piece = _json_string(text) if isinstance(text, str) else json.dumps(text)
            n = len(piece) + 2
            if current and (len(current) >= size or current_bytes + n > max_bytes):
                yield jobspec.EncodedBatch(current, encoded)
                current, encoded, current_bytes = [], [], 0
            current.append(text)
            encoded.append(piece)
            current_bytes += n
        if current:
            yield jobspec.EncodedBatch(current, encoded)

    def enqueue(self, texts: Sequence[str]) -> None:
        """Enqueue the events as jobs of bounded batches, a few jobs per MULTI/EXEC. Raises on failure."""
        for _ in self._enqueue_steps(texts, patient=True):
            pass

    def _enqueue_steps(self, texts: Sequence[str], patient: bool) -> Iterator[int]:
        """Enqueue group after group of jobs, yielding how many events (a prefix of `texts`) are in Redis."""
        if not texts:
            return
        _, queue = self._connection(patient)
        batches = self._iter_batches(texts)
        done = 0
        # a few jobs per round trip keeps each transaction (and the socket timeout it must meet) small; each
        # group is cut from `texts` as it goes (cutting 100k events first held the first job back ~0.2 s)
        while group := list(itertools.islice(batches, _JOBS_PER_ROUND_TRIP)):
            pipe = queue.connection.pipeline()  # MULTI/EXEC: a group is enqueued whole or not at all
            queue.enqueue_many(
                [
                    Queue.prepare_data(
                        jobspec.INGEST_FUNC,
                        args=[batch],
                        retry=self._retry,
                        **jobspec.job_options(batch),
                    )
                    for batch in group
                ],
                pipeline=pipe,
            )
            pipe.execute()
            done += sum(len(batch) for batch in group)
            yield done

    def _deliver(self, texts: list[str], patient: bool = False) -> None:
        """Enqueue, or spool when Redis is away. Never raises. `patient`: not on an app thread's hot path."""
        if not texts:
            return
        if self._breaker.allows():
            done = 0
            try:
                for done in self._enqueue_steps(texts, patient):  # noqa: B007 (read after the loop)
                    pass
            except Exception as exc:
                # only what Redis did not take goes to the spool
                self.published += done
                texts = texts[done:]
                self._breaker.failed()
                logger.warning(
                    "usagebill: Redis unavailable (%s: %s); spooling events for %.1f s",
                    type(exc).__name__,
                    exc,
                    self._breaker.open_seconds,
                )
            else:
                self.published += len(texts)
                if self._breaker.succeeded() or self._spool.pending:
                    self._request_replay()
                return
        self._spool_texts(texts, "Redis unavailable")

    def _spool_texts(self, texts: list[str], why: str, timeout: float = -1) -> None:
        try:
            self._spool.append(texts, timeout)
        except Exception as exc:
            self._count_drop(len(texts), f"{why} and the spool refused them ({exc})")
            return
        self.spooled += len(texts)
        self._replay_wanted = True
        if self._thread is None and not self._closed:
            self._start_thread()  # it probes Redis and replays the spool once Redis answers again

    def _take(self, max_count: int) -> list[str]:
        out: list[str] = []
        pop = self._buffer.popleft
        with contextlib.suppress(IndexError):
            for _ in range(max_count):
                out.append(pop())
        return out

    def _take_all(self) -> list[str]:
        return self._take(len(self._buffer))

    def _drain(self, deadline: float | None) -> None:
        # a few batches per round: a flush under load does not hold the buffer back for ever
        chunk = self.config.batch_size * 8
        while self._buffer:
            if deadline is not None and time.monotonic() > deadline:
                return
            self._deliver(self._take(chunk), patient=True)

    def _count_drop(self, n: int, why: str) -> None:
        self.dropped += n
        now = time.monotonic()
        if now - self._last_drop_log >= 10.0:  # report, but do not flood the app's logs
            self._last_drop_log = now
            logger.warning("usagebill: %d event(s) dropped: %s (%d dropped so far)", n, why, self.dropped)

    # -- background thread ------------------------------------------------------------------------------------

    def _request_replay(self) -> None:
        self._replay_wanted = True
        if self._thread is None:
            self._start_thread()
        else:
            self._wake.set()

    def _start_thread(self) -> None:
        with self._state_lock:
            if self._thread is not None or self._closed:
                return
            thread = threading.Thread(target=self._run, name="usagebill-publisher", daemon=True)
            self._thread = thread
        thread.start()

    def _run(self) -> None:
        interval = self.config.flush_interval
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                if self._buffer:
                    with self._send_lock:
                        self._drain(None)
                if self._replay_wanted and self._breaker.allows():
                    self._start_replay()
            except Exception:  # the thread must survive anything: it is the only flusher
                logger.exception("usagebill publisher thread error")
            if self._replay_wanted:
                # Redis is away and spooled events wait: come back when the breaker lets us try again
                interval = max(min(self.config.breaker_open_seconds, self.config.flush_interval), 0.05)
            else:
                interval = self.config.flush_interval

    def _start_replay(self) -> None:
        # a thread of its own: a long outage's backlog must not hold back the flushes of new events
        with self._state_lock:
            if self._closed or (self._replay_thread is not None and self._replay_thread.is_alive()):
                return
            thread = threading.Thread(target=self._background_replay, name="usagebill-replay", daemon=True)
            self._replay_thread = thread
        thread.start()

    def _background_replay(self) -> None:
        try:
            if self._breaker.is_open and not self._probe():
                return
            spooled_before = self.spooled
            report = self.replay()
            # events spooled while we replayed may sit in a file this pass did not take: keep wanting
            if report.failed_files == 0 and self.spooled == spooled_before:
                self._spool.pending = 0
                self._replay_wanted = False
            if report.events:
                logger.info("usagebill: replayed %d spooled events from %d files", report.events, report.files)
        except Exception:
            logger.exception("usagebill publisher replay error")

    def _probe(self) -> bool:
        try:
            redis, _ = self._connection(patient=True)
            redis.ping()
        except Exception:
            self._breaker.failed()
            return False
        self._breaker.succeeded()
        return True


# -- process-wide hooks: exit, SIGTERM, fork -------------------------------------------------------------------

_live: weakref.WeakSet[Publisher] = weakref.WeakSet()
_sigterm_installed = False
_previous_sigterm: Callable[[int, FrameType | None], Any] | int | None = None


def _flush_all(timeout: float | None = None) -> None:
    for pub in list(_live):
        try:
            pub.flush(pub.config.exit_flush_timeout if timeout is None else timeout)
            if pub._buffer:  # timed out: keep them on disk rather than lose them
                # bounded waits: in a signal handler the lock may belong to the very code we interrupted
                pub._spool_texts(pub._take_all(), "exiting", timeout=1.0)
            pub._spool.seal(timeout=1.0)
        except Exception:
            logger.exception("usagebill: flush at exit failed")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _flush_all()
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_IGN:
        return
    else:  # SIG_DFL (or unknown: a handler installed outside Python): die of SIGTERM as without us
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _install_sigterm_handler() -> None:
    """Chain our flush in front of the app's SIGTERM handler. Only the main thread may set handlers."""
    global _sigterm_installed, _previous_sigterm  # noqa: PLW0603
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    if current is _on_sigterm:
        _sigterm_installed = True
        return
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main interpreter
        return
    _previous_sigterm = current
    _sigterm_installed = True


def _after_fork_in_child() -> None:
    global _default_lock  # noqa: PLW0603
    _default_lock = threading.Lock()
    for pub in list(_live):
        pub._after_fork_in_child()


atexit.register(_flush_all)
os.register_at_fork(after_in_child=_after_fork_in_child)


# -- the process's default publisher ---------------------------------------------------------------------------

_default: Publisher | None = None
_default_lock = threading.Lock()


def configure(config: PublisherConfig | None = None, **overrides: Any) -> Publisher:
    """Replace the default publisher (the previous one is flushed and closed). Raises on invalid config."""
    global _default
    new = Publisher(config, **overrides)
    with _default_lock:
        old, _default = _default, new
    if old is not None:
        old.close()
    return new


def get_publisher() -> Publisher:
    """The process's default publisher, configured from the environment on first use."""
    global _default  # noqa: PLW0603
    pub = _default
    if pub is not None:
        return pub
    with _default_lock:
        if _default is None:
            try:
                _default = Publisher()
            except ValidationError as exc:
                # a bad variable must not cost the app its events: defaults still spool locally at worst
                logger.error("usagebill: invalid publisher configuration, using defaults: %s", exc)
                _default = Publisher(PublisherConfig.model_construct())
        return _default


def emit(event: UsageEvent) -> None:
    """Publish one event with the default publisher. Never raises."""
    try:
        get_publisher().publish(event)
    except Exception:
        logger.exception("usagebill: emit failed")


async def publish_async(event: UsageEvent, publisher: Publisher | None = None) -> None:
    """Publish from a coroutine without blocking the event loop on Redis I/O. Never raises."""
    pub = publisher if publisher is not None else get_publisher()
    if pub.mode == "buffered":
        pub.publish(event)  # only a memory append: the background thread does the I/O
        return
    await asyncio.to_thread(pub.publish, event)


class AsyncPublisher:
    """A publisher for asyncio code: Redis I/O runs off the event loop, in a thread."""

    def __init__(self, publisher: Publisher | None = None, **overrides: Any) -> None:
        self.publisher = publisher if publisher is not None else Publisher(**overrides)

    async def publish(self, event: UsageEvent) -> None:
        await publish_async(event, self.publisher)

    async def flush(self, timeout: float | None = 10.0) -> bool:
        return await asyncio.to_thread(self.publisher.flush, timeout)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.publisher.close)
