"""Look-ahead for one worker: validate the next queued ingest job while the current one runs in Postgres.

A worker's batch spends most of its time waiting for Postgres (its backend does ~3/4 of the work), and
the validation of the batch (pydantic, canonical JSON, sha256) runs before that, on the worker's own
core. While a job runs, this thread reads the job at the head of the worker's queues (LINDEX and HGET:
reads only, the job stays queued for whichever worker takes it), decodes it and validates its events.
When this worker then takes that job, the job uses the prepared rows if its events are equal to the
ones prepared; otherwise, or when nothing was prepared, it validates as usual. Nothing here changes
which worker runs a job, or when: a look-ahead that is wrong, late or lost only costs the work it did.

The thread validates while the main thread waits on Postgres (psycopg releases the GIL while it
waits); the interpreter's switch interval is lowered so that a reply from Postgres is not left waiting
up to 5 ms for the GIL while the thread validates.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import redis
from rq.job import Job

from billing import ingest
from producer import jobspec

log = logging.getLogger("usagebill.prefetch")

#: seconds between forced GIL hand-overs while the look-ahead validates (CPython's default is 5 ms)
SWITCH_INTERVAL = 0.0002
#: prepared batches kept for jobs not taken yet (the one after the current job, and one more)
KEEP = 2
#: how long a job waits for the look-ahead that is preparing this very job before validating itself
WAIT_SECONDS = 10.0


class Prefetcher:
    """One background thread that prepares the job at the head of `queue_keys` when asked (`ahead`)."""

    def __init__(
        self,
        connection: redis.Redis,
        queue_keys: Sequence[str],
        prepare: Callable[[list[Any]], ingest.Prepared] = ingest.prepare,
    ) -> None:
        self._connection = connection
        self._queue_keys = list(queue_keys)
        self._prepare = prepare
        self._cond = threading.Condition()
        self._asked = False
        self._current: str | None = None
        self._busy: str | None = None  # the job id being prepared
        self._ready: dict[str, ingest.Prepared] = {}  # job id -> its prepared batch, oldest first
        #: jobs that found their batch prepared, and jobs that did not (validated in the job)
        self.hits = 0
        self.misses = 0
        #: whether the worker looks ahead now (it does only while it is the only worker on its queues)
        self.active = False
        self._thread = threading.Thread(target=self._run, name="usagebill-prefetch", daemon=True)
        self._thread.start()
        if sys.getswitchinterval() > SWITCH_INTERVAL:
            sys.setswitchinterval(SWITCH_INTERVAL)

    def retarget(self, connection: redis.Redis, queue_keys: Sequence[str]) -> None:
        """Look ahead in these queues from now on (what was prepared is kept: `take` checks the events)."""
        with self._cond:
            self._connection = connection
            self._queue_keys = list(queue_keys)

    def ahead(self, current_job_id: str) -> None:
        """The worker starts `current_job_id`: prepare the job queued after it (in the background)."""
        with self._cond:
            self._current = current_job_id
            self._asked = True
            self._cond.notify_all()

    def take(self, job_id: str, events: list[Any]) -> ingest.Prepared | None:
        """The prepared batch of `job_id` when its events equal `events`, else None (then validate as usual).

        When the look-ahead is working on this very job, wait for it: it has done part of the work.
        """
        with self._cond:
            self._cond.wait_for(lambda: self._busy != job_id, timeout=WAIT_SECONDS)
            prepared = self._ready.pop(job_id, None)
            # equal payloads: the same events in the same order (rq decoded its own copy of the job's data)
            if prepared is not None and prepared.events != events:
                prepared = None
            if prepared is None:
                self.misses += 1
            else:
                self.hits += 1
            return prepared

    def ready_ids(self) -> list[str]:
        """The jobs prepared and not taken yet, oldest first."""
        with self._cond:
            return list(self._ready)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._asked)
                self._asked = False
                skip = {self._current, *self._ready}
                connection, keys = self._connection, self._queue_keys
            try:
                job_id = self._next_job_id(connection, keys, skip)
            except redis.RedisError as exc:
                log.debug("look-ahead skipped: %s", exc)
                continue
            if job_id is None:
                continue
            with self._cond:
                self._busy = job_id  # from here on, the job waits for this look-ahead instead of racing it
            prepared = None
            try:
                events = self._events(connection, job_id)
                prepared = self._prepare(events) if events is not None else None
            except Exception:  # a look-ahead never fails a job: the job validates itself and reports
                log.debug("look-ahead of job %s failed", job_id, exc_info=True)
            with self._cond:
                self._busy = None
                if prepared is not None:
                    self._ready[job_id] = prepared
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
            job_id = head.decode() if isinstance(head, bytes) else str(head)
            return None if job_id in skip else job_id
        return None

    @staticmethod
    def _events(connection: redis.Redis, job_id: str) -> list[Any] | None:
        data = connection.hget(Job.key_for(job_id), "data")
        if not isinstance(data, bytes):
            return None
        with contextlib.suppress(zlib.error):  # else rq's own fallback: a payload stored uncompressed
            data = zlib.decompress(data)
        # rq's JSONSerializer: (function name, instance, args, kwargs)
        func, _instance, args, _kwargs = json.loads(data)
        if func != jobspec.INGEST_FUNC or not args or not isinstance(args[0], list):
            return None
        events: list[Any] = args[0]
        return events
