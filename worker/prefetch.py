"""Look-ahead for one worker: validate the next queued ingest job while the current one runs in Postgres.

A worker's batch spends most of its time waiting for Postgres, and the validation of the batch
(pydantic, canonical JSON, sha256, its COPY lines) runs before that, on the worker's own core. Once a
job's batch goes to Postgres, this thread reads the job at the head of the worker's queues (LINDEX and
HGET: reads only, the job stays queued for whichever worker takes it), decodes it and validates its
events. When this worker then takes that job, the job uses the prepared rows if its payload is the very
bytes that were prepared; otherwise, or when nothing was prepared, it validates as usual. Nothing here
changes which worker runs a job, or when, or what is stored: a look-ahead that is wrong or lost costs
the work it did (CPU, and ~3.5 MB per prepared 1000-event job: its payload, decoded, and its COPY
lines; at most KEEP of them), and a job waits for it only while it validates that very job.

The thread validates while the main thread waits on Postgres (psycopg releases the GIL while it
waits); while the look-ahead is active the interpreter's switch interval is lowered, so that a reply
from Postgres is not left waiting up to 5 ms for the GIL while the thread validates.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from billing import ingest
from producer import jobspec

log = logging.getLogger("usagebill.prefetch")

#: seconds between forced GIL hand-overs while the look-ahead is active (CPython's default is 5 ms)
SWITCH_INTERVAL = 0.0002
#: prepared batches kept for jobs not taken yet (the one after the current job, and one more)
KEEP = 2
#: how long a job waits for the look-ahead that is validating this very job before validating itself
WAIT_SECONDS = 2.0


@dataclass
class _Ahead:
    """A job the look-ahead read and prepared."""

    packed: bytes  # its payload as stored in Redis: what the job that takes it must have loaded
    prepared: ingest.Prepared
    plain: bytes  # the payload decompressed
    decoded: list[Any]  # rq's (function, instance, args, kwargs), as rq's JSON serializer decodes it


class Prefetcher:
    """One background thread that prepares the job at the head of `queue_keys` when asked (`ahead`).

    Jobs above `max_events` events or `max_bytes` bytes of events are not prepared: the job splits them
    without validating them.
    """

    def __init__(
        self,
        connection: redis.Redis,
        queue_keys: Sequence[str],
        *,
        max_events: int,
        max_bytes: int,
        prepare: Callable[[list[Any]], ingest.Prepared] = ingest.prepare,
    ) -> None:
        self._connection = connection
        self._queue_keys = list(queue_keys)
        self._max_events, self._max_bytes = max_events, max_bytes
        self._prepare = prepare
        self._cond = threading.Condition()
        self._asked = False
        self._current: str | None = None
        self._busy: str | None = None  # the job id being validated
        self._ready: dict[str, _Ahead] = {}  # job id -> what was prepared for it, oldest first
        self._default_interval = sys.getswitchinterval()
        self.active = False
        #: jobs that found their batch prepared, and jobs that did not (validated in the job)
        self.hits = 0
        self.misses = 0
        self._thread = threading.Thread(target=self._run, name="usagebill-prefetch", daemon=True)
        self._thread.start()

    def retarget(self, connection: redis.Redis, queue_keys: Sequence[str], *, max_events: int, max_bytes: int) -> None:
        """Look ahead in these queues from now on (what was prepared is kept: `take` checks the payload)."""
        with self._cond:
            self._connection = connection
            self._queue_keys = list(queue_keys)
            self._max_events, self._max_bytes = max_events, max_bytes

    def activate(self, active: bool) -> None:
        """Whether jobs look ahead from now on (the worker's choice: only while alone on its queues)."""
        if active == self.active:
            return
        self.active = active
        if active:
            self._default_interval = sys.getswitchinterval()  # what to go back to
            sys.setswitchinterval(min(SWITCH_INTERVAL, self._default_interval))
        else:
            sys.setswitchinterval(self._default_interval)

    def ahead(self, current_job_id: str) -> None:
        """The batch of `current_job_id` goes to Postgres: prepare the job queued after it (in the background)."""
        with self._cond:
            self._current = current_job_id
            self._asked = True
            self._cond.notify_all()

    def payload(self, job_id: str, packed: bytes) -> tuple[bytes, list[Any]] | None:
        """The decompressed and decoded payload of `job_id` when the look-ahead read these very (compressed)
        bytes, so that rq need not decompress and decode it again (`worker.worker.IngestJob.restore`);
        once per job. Never waits: rq calls it while the job sits in its intermediate list, where a job
        that lingers is taken for abandoned (`worker.worker.recover_abandoned`); `take` waits instead."""
        with self._cond:
            ahead = self._ready.get(job_id)
            if ahead is None or not ahead.decoded or ahead.packed != packed or ahead.plain is ahead.packed:
                return None
            decoded, ahead.decoded = ahead.decoded, []
            return ahead.plain, decoded

    def take(self, job_id: str, packed: bytes | None) -> ingest.Prepared | None:
        """The prepared batch of `job_id` when the job was loaded from the very payload bytes that were
        prepared (`packed`, as stored in Redis), else None: then the job validates its events itself.

        When the look-ahead is validating this very job, wait for it (at most WAIT_SECONDS): it has done
        part of the work.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._busy != job_id, timeout=WAIT_SECONDS)
            ahead = self._ready.pop(job_id, None)
            hit = ahead is not None and packed is not None and ahead.packed == packed
            if hit:
                self.hits += 1
            else:
                self.misses += 1
            return ahead.prepared if hit and ahead is not None else None

    def ready_ids(self) -> list[str]:
        """The jobs prepared and not taken yet, oldest first."""
        with self._cond:
            return list(self._ready)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._asked)
                self._asked = False
                skip = {self._current, *self._ready}
                connection, keys = self._connection, self._queue_keys
            try:
                self._look(connection, keys, skip)
            except Exception:  # never let the thread die: a job then validates itself, as without it
                log.warning("look-ahead failed (jobs validate their own batches meanwhile)", exc_info=True)
                with self._cond:
                    self._busy = None
                    self._cond.notify_all()

    def _look(self, connection: redis.Redis, keys: list[str], skip: set[str | None]) -> None:
        job_id = self._next_job_id(connection, keys, skip)
        if job_id is None:
            return
        loaded = self._load(connection, job_id)  # a slow Redis delays only this thread, never a job
        if loaded is None:
            return
        packed, plain, decoded = loaded
        with self._cond:
            if job_id == self._current:
                return  # taken and started meanwhile: it validated itself
            self._busy = job_id  # from here on, that job waits for this look-ahead instead of racing it
        prepared = None
        try:
            prepared = self._prepare(decoded[2][0])
        finally:
            with self._cond:
                self._busy = None
                if prepared is not None:
                    self._ready[job_id] = _Ahead(packed, prepared, plain, decoded)
                    while len(self._ready) > KEEP:  # jobs taken by other workers: forget the oldest
                        del self._ready[next(iter(self._ready))]
                self._cond.notify_all()

    @staticmethod
    def _next_job_id(connection: redis.Redis, keys: list[str], skip: set[str | None]) -> str | None:
        # the job a worker takes next is the head of its first non-empty queue (rq dequeues with LMOVE
        # from the left, in queue order)
        for key in keys:
            head = connection.lindex(key, 0)
            if head is None:
                continue
            job_id = head.decode("utf-8", errors="replace") if isinstance(head, bytes) else str(head)
            return None if job_id in skip else job_id
        return None

    def _load(self, connection: redis.Redis, job_id: str) -> tuple[bytes, bytes, list[Any]] | None:
        # the job's payload as rq stores it: zlib-compressed JSON of (function, instance, args, kwargs)
        packed = connection.hget(Job.key_for(job_id), "data")
        if not isinstance(packed, bytes):
            return None
        plain = packed
        with contextlib.suppress(zlib.error):  # else rq's own fallback: a payload stored uncompressed
            plain = zlib.decompress(packed)
        if len(plain) > 2 * self._max_bytes + 1024:
            return None  # far above the byte bound: the job splits it without validating
        decoded = JSONSerializer.loads(plain)  # type: ignore[no-untyped-call]  # as rq decodes it
        if not isinstance(decoded, list) or len(decoded) != 4 or decoded[0] != jobspec.INGEST_FUNC:
            return None
        args = decoded[2]
        if not isinstance(args, list) or not args or not isinstance(args[0], list):
            return None
        events: list[Any] = args[0]
        if len(events) > self._max_events or jobspec.batch_bytes(events) > self._max_bytes:
            return None  # the job splits it without validating
        return packed, plain, decoded
