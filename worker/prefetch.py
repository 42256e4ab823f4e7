"""Look-ahead for one worker: validate the next queued ingest job while the current one runs in Postgres.

A worker's batch spends most of its time waiting for Postgres, and the validation of the batch
(pydantic, canonical JSON, sha256, its COPY lines) runs before that, on the worker's own core. Once a
job's batch goes to Postgres, this thread reads the jobs at the head of the worker's queues (LRANGE and
HGET: reads only, the jobs stay queued for whichever worker takes them), decodes them and validates
their events. When this worker then takes such a job, the job uses the prepared rows if its payload is
the very bytes that were prepared; otherwise, or when nothing was prepared, it validates as usual. A
look-ahead that is wrong or lost costs the work it did (CPU, and ~3.5 MB per prepared 1000-event job:
its payload, decoded, and its COPY lines; at most KEEP_ROUNDS rounds of them), and a job waits for it
only while it validates that very job.

The thread validates while the main thread waits on Postgres (psycopg releases the GIL while it
waits); while the look-ahead is active the interpreter's switch interval is lowered, so that a reply
from Postgres is not left waiting up to 5 ms for the GIL while the thread validates.

Merging waiting jobs. A transaction costs ~20 ms whatever its size (rq, the aggregates' lines, the
statements' start-up, the commit), so a backlog of small jobs is slow to drain. Each round prepares as
many waiting events as one transaction carries (`round_events`), and a job whose batch goes to Postgres
carries (`riders`) the prepared jobs queued right after it, as a contiguous run from the head of its
queue and within `merge_events` events in all: their rows go in the same transaction, after its own.
Once it commits, those jobs are done: each job's id and counts are stored in ingest_jobs by the
transaction that committed its batch. When rq hands one to this worker it finishes at once (`merged_into`,
no Postgres work); any other run of it (another worker took it, this worker stopped or died first) finds
its id claimed, waits for that transaction if it is still open, and returns the stored counts. A
transaction that fails leaves every job to run on its own.

Committing ahead. After a transaction commits, rq spends ~3 ms per job it carried on its bookkeeping
(dequeue, start, result: Redis round trips), during which Postgres waited idle: ~11 ms of every ~100 ms
transaction. With `commit_ahead`, a second thread (on a connection of its own) takes the next prepared
jobs at the head of the queue as soon as a transaction commits, and commits them as one transaction
while rq does that bookkeeping: the first of them leads (its job id claims the transaction, as the job
itself would), the others ride. rq then hands them to this worker as usual and each finishes at once
with its stored counts (`merged_into`, waiting while their transaction is still open). The claims in
ingest_jobs keep it exactly once whoever runs a job: a job committed ahead that another worker or a
later run takes returns its stored result. Jobs still commit in queue order, one transaction at a time
ahead of rq and at most KEEP_ROUNDS rounds of them not handed to rq yet; a transaction ahead that fails
leaves its jobs to run on their own, and nothing more is committed ahead until a job commits again.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sys
import threading
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from rq.job import Job

from billing import ingest
from billing.db import first_line
from producer import jobspec

log = logging.getLogger("usagebill.prefetch")
_V = TypeVar("_V")

#: seconds between forced GIL hand-overs while the look-ahead is active (CPython's default is 5 ms)
SWITCH_INTERVAL = 0.0002
#: a round prepares the jobs at the head of the queue up to this many, and up to its events budget
#: (`round_events`: what one transaction may carry, at least one full job)
ROUND_JOBS = 64
#: prepared batches kept for jobs not taken yet: a round's budget and as much again, in events; and
#: committed riders not handed to this worker yet, in jobs
KEEP_ROUNDS = 2
#: how long a job waits for the look-ahead that is validating this very job before validating itself
WAIT_SECONDS = 2.0


#: how long a job waits for the transaction committing it ahead before running itself (then its claim
#: waits for that transaction, and returns its stored result if it committed)
AHEAD_WAIT_SECONDS = jobspec.JOB_TIMEOUT / 2
#: a transaction committing ahead: (the leading job id, its prepared batch, the riders) -> the result of
#: each job it committed, by job id (what each returns when rq hands it over), and what to do once they
#: are handed out (the quota mirror's refresh: no job waits for it)
Commit = Callable[[str, ingest.Prepared, list[ingest.Rider]], tuple[dict[str, dict[str, Any]], Callable[[], None]]]


#: what a committed rider keeps instead of its rows
_SPENT = ingest.Prepared(events=(), rows=[], block="", latest=None, rejected=[])


@dataclass
class _Ahead:
    """A job the look-ahead read and prepared."""

    packed: bytes  # its payload as stored in Redis: what the job that takes it must have loaded
    prepared: ingest.Prepared
    plain: bytes  # the payload decompressed
    decoded: list[Any]  # rq's (function, instance, args, kwargs), as rq's JSON serializer decodes it
    size: int = 0  # its events' bytes, as USAGEBILL_BATCH_MAX_BYTES counts them
    events: int = 0  # how many events it has


class Prefetcher:
    """One background thread that prepares the jobs at the head of `queue_keys` when asked (`ahead`), in
    queue order: per round, as many events as one transaction may carry (`round_events`).

    Jobs above `max_events` events or `max_bytes` bytes of events are not prepared: the job splits them
    without validating them. A job carries as riders at most `merge_events` events of other jobs
    (0: none).
    """

    def __init__(
        self,
        connection: redis.Redis,
        queue_keys: Sequence[str],
        *,
        max_events: int,
        max_bytes: int,
        merge_events: int = 0,
        prepare: Callable[[list[Any]], ingest.Prepared] = ingest.prepare,
    ) -> None:
        self._cond = threading.Condition()
        self.retarget(connection, queue_keys, max_events=max_events, max_bytes=max_bytes, merge_events=merge_events)
        self._prepare = prepare
        self._asked = False
        self._current: str | None = None
        self._busy: str | None = None  # the job id being validated
        self._ready: dict[str, _Ahead] = {}  # job id -> what was prepared for it, in queue order
        self._riding: dict[str, _Ahead] = {}  # riders of the transaction in flight
        self._carrier: str | None = None  # the job whose transaction carries them
        self._done: dict[str, tuple[_Ahead, dict[str, Any]]] = {}  # committed riders -> (what, their result)
        self._flight: dict[str, _Ahead] = {}  # the jobs of the transaction committing ahead, its lead first
        self._commit: Commit | None = None  # commits ahead when set (`commit_ahead`)
        self._go = False  # a transaction committed: the next prepared jobs may be committed ahead
        self._held = False  # a transaction ahead waits for rq to take the jobs committed ahead before it
        self._own = False  # rq's current job runs its own transaction: nothing commits ahead meanwhile
        self._want = False  # the next job was not prepared yet: the look-ahead wakes the committer once it is
        self._passed: set[str] = set()  # jobs that stopped waiting for their transaction ahead (ran themselves)
        self._stopping = False
        self._committer: threading.Thread | None = None
        # what follows each transaction ahead (the quota mirror's refresh): run in order by a thread of its own
        # (`_run_afters`), off the committer's path; queued under the lock, as the transaction's jobs are handed
        # out, and taken off the queue once it has run
        self._afters: list[Callable[[], None]] = []
        self._default_interval = sys.getswitchinterval()
        self.active = False
        #: jobs that found their batch prepared, and jobs that did not (validated in the job)
        self.hits = 0
        self.misses = 0
        #: jobs whose batch another job's transaction committed
        self.merged = 0
        #: jobs committed ahead of rq (leads and riders), and transactions ahead that failed
        self.committed_ahead = 0
        self.ahead_failures = 0
        self._thread = threading.Thread(target=self._run, name="usagebill-prefetch", daemon=True)
        self._thread.start()

    def retarget(
        self,
        connection: redis.Redis,
        queue_keys: Sequence[str],
        *,
        max_events: int,
        max_bytes: int,
        merge_events: int = 0,
    ) -> None:
        """Look ahead in these queues from now on, within these bounds (what was prepared is kept: `take`
        checks the payload)."""
        with self._cond:
            self._connection = connection
            self._queue_keys = list(queue_keys)
            self._max_events, self._max_bytes = max_events, max_bytes
            self.merge_events = merge_events

    @property
    def round_events(self) -> int:
        """Events a round prepares at most (then it stops at the end of a job): what a transaction carries."""
        return max(self.merge_events, self._max_events, 1)

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
            with self._cond:
                # other workers share the queues now: they may take what was committed ahead (and find its
                # claim); kept, those entries would hold back committing ahead once alone again
                self._done.clear()

    def ahead(self, current_job_id: str) -> None:
        """The batch of `current_job_id` (and of its riders) goes to Postgres: prepare the jobs queued after
        them (in the background)."""
        with self._cond:
            self._current = current_job_id
            self._asked = True
            self._cond.notify_all()

    def commit_ahead(self, commit: Commit) -> None:
        """Commit prepared jobs ahead of rq from now on, with `commit` (on a thread of its own, started once;
        `stop_ahead` stops it committing)."""
        with self._cond:
            self._commit = commit
            self._stopping = False
            if self._committer is None:
                # daemon threads: exit waits for them only as long as `worker.close` does (at most 30 s each)
                threading.Thread(target=self._run_afters, name="usagebill-after-commit", daemon=True).start()
                self._committer = threading.Thread(target=self._run_ahead, name="usagebill-commit-ahead", daemon=True)
                self._committer.start()

    def go_ahead(self) -> None:
        """A transaction of this worker committed: the next prepared jobs may be committed ahead."""
        with self._cond:
            self._own = False
            self._go = True
            self._cond.notify_all()

    def stop_ahead(self, timeout: float | None = None) -> bool:
        """Commit nothing more ahead; with a `timeout`, wait that long for a transaction ahead still open.
        Returns whether none is open. Never blocks without a timeout (rq's signal handler calls it)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            if timeout is None:
                return not self._flight
            return self._cond.wait_for(lambda: not self._flight, timeout=timeout)

    def drain_after(self, timeout: float) -> bool:
        """Wait at most `timeout` for what follows the transactions committed ahead so far (the quota mirror's
        refreshes, run in order on a thread of their own); returns whether all of it ran."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._afters, timeout=timeout)

    def payload(self, job_id: str, packed: bytes) -> tuple[bytes, list[Any]] | None:
        """The decompressed and decoded payload of `job_id` when the look-ahead read these very (compressed)
        bytes, so that rq need not decompress and decode it again (`worker.worker.IngestJob.restore`);
        once per job. Never waits: rq calls it while the job sits in its intermediate list, where a job
        that lingers is taken for abandoned (`worker.worker.recover_abandoned`); `take` waits instead."""
        with self._cond:
            ahead = self._ready.get(job_id) or self._flight.get(job_id)
            if ahead is None and job_id in self._done:
                ahead = self._done[job_id][0]
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

    def riders(self, job_id: str, queued: Sequence[bytes | str], own_events: int, own_bytes: int) -> list[ingest.Rider]:
        """The prepared jobs that `job_id`'s transaction carries: `queued` is its queue's head now, in
        order (the job ids as Redis lists them); the riders are the prepared jobs at its front, up to the
        first one that is not prepared (so jobs still commit in queue order), within `merge_events` events
        and `max_bytes` bytes of events with the job's own. Never waits.
        """
        with self._cond:
            if self._riding:  # a transaction ended without saying how (an interrupt): its riders run alone
                log.warning("riders of job %s left behind: they run on their own", self._carrier)
                self._riding.clear()
            ids = itertools.takewhile(lambda queued_id: queued_id != job_id, map(_text, queued))
            out: list[ingest.Rider] = []
            for queued_id, ahead in self._run_of(ids, self.merge_events - own_events, self._max_bytes - own_bytes):
                self._riding[queued_id] = self._ready.pop(queued_id)
                out.append(ingest.Rider(queued_id, ahead.prepared))
            self._carrier = job_id if out else None
            return out

    def committed(self, results: dict[str, dict[str, Any]]) -> None:
        """The transaction carrying the riders committed: their jobs are done (`merged_into`), each with
        its result in `results`."""
        with self._cond:
            for rider_id, ahead in self._riding.items():
                if rider_id not in results:
                    continue  # committed by another transaction first: it was left out
                ahead.prepared = _SPENT  # its rows are in Postgres: only the payload handout may still need it
                self._done[rider_id] = (ahead, results[rider_id])
                self.merged += 1
            self._riding.clear()
            self._carrier = None
            # jobs another worker took meanwhile: forget the oldest (run again anywhere, a job finds its
            # result in ingest_jobs)
            _trim(self._done, KEEP_ROUNDS * self.round_events, lambda done: done[0].events)

    def dropped(self) -> None:
        """The transaction carrying the riders failed: they run on their own (validating themselves)."""
        with self._cond:
            self._riding.clear()
            self._carrier = None

    def merged_into(self, job_id: str, packed: bytes | None) -> dict[str, Any] | None:
        """The result of `job_id` when a committed transaction carried its batch, from these very payload
        bytes; once per job. A job its transaction is committing ahead waits for it (at most
        AHEAD_WAIT_SECONDS). Otherwise the job is this worker's to run: nothing commits it ahead."""
        with self._cond:
            if not self._cond.wait_for(lambda: job_id not in self._flight, timeout=AHEAD_WAIT_SECONDS):
                self._passed.add(job_id)  # runs itself (its claim waits for that transaction)
            done = self._done.pop(job_id, None)  # once per job; a stale entry goes too
            if done is None or packed is None or done[0].packed != packed:
                # this worker's to run (a job loaded from other bytes finds its claim, if committed):
                # the look-ahead passes it over, and nothing commits ahead while its transaction is open
                self._current, self._own = job_id, True
                return None
            if self._held:
                self._held, self._go = False, True  # room again for the transaction ahead held back
                self._cond.notify_all()
            return done[1]

    def ready_ids(self) -> list[str]:
        """The jobs prepared and not taken yet, in queue order."""
        with self._cond:
            return list(self._ready)

    def done_ids(self) -> list[str]:
        """The jobs whose batch a committed transaction carried, not handed to this worker yet."""
        with self._cond:
            return list(self._done)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._asked)
                self._asked = False
                connection, keys, room = self._connection, self._queue_keys, self.round_events
                skip = self._taken()
            try:
                # what the next transaction can hold: the next job and the jobs it may carry. Validating
                # further ahead only competes with the running job for the GIL (2500-event jobs, which
                # carried nothing within the 4000 events transactions then held, ran ~15% slower when
                # each round prepared two)
                first = True
                for job_id in self._next_job_ids(connection, keys, skip):
                    prepared = self._look(connection, job_id, None if first else room)
                    if prepared is None or (prepared and (room := room - prepared) <= 0):
                        break
                    first = first and not prepared
            except Exception:  # never let the thread die: a job then validates itself, as without it
                log.warning("look-ahead failed (jobs validate their own batches meanwhile)", exc_info=True)
                with self._cond:
                    self._busy = None
                    self._cond.notify_all()

    def _taken(self) -> set[str | None]:
        # jobs the look-ahead must not prepare (again): running, prepared, riding, committing ahead or done
        return {self._current, *self._ready, *self._riding, *self._flight, *self._done}

    def _run_ahead(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._go)
                self._go = False
                commit, connection, keys = self._commit, self._connection, self._queue_keys
                if commit is None or self._stopping or not self.active:
                    continue  # (the thread stays: `commit_ahead` may start it again)
            try:
                heads = self._next_job_ids(connection, keys, set())
            except Exception:  # Redis: rq's own loop meets it too; the jobs then run as usual
                log.warning("committing ahead: reading the queue failed", exc_info=True)
                continue
            with self._cond:
                # checked again with the pick: a stop (SIGTERM, exit) or a job of rq's own since
                if self._stopping or not self.active or self._own:
                    continue
                picked = self._pick(heads)
                if not picked:
                    continue
                self._asked = True  # the look-ahead prepares the jobs queued after these
                self._cond.notify_all()
            lead, *rest = picked
            riders = [ingest.Rider(job_id, ahead.prepared) for job_id, ahead in rest]
            try:
                results, after = commit(lead[0], lead[1].prepared, riders)
            except Exception as exc:  # whatever it was, each job meets it again when rq hands it over
                log.warning(
                    "committing %d job(s) ahead failed, each runs on its own: %s: %s",
                    len(picked),
                    type(exc).__name__,
                    first_line(exc),
                )
                with self._cond:
                    self.ahead_failures += 1
                    self._flight.clear()
                    self._cond.notify_all()
                continue
            with self._cond:
                for job_id, ahead in self._flight.items():
                    # a rider another transaction committed first was left out; a job that stopped
                    # waiting ran itself (and found this transaction's claim)
                    if job_id in results and job_id not in self._passed:
                        ahead.prepared = _SPENT
                        self._done[job_id] = (ahead, results[job_id])
                        self.committed_ahead += 1
                self._passed.difference_update(self._flight)
                self._flight.clear()
                # the mirror's refresh (~2-4 ms) on its own thread: the next transaction starts meanwhile.
                # Queued before the flight is seen cleared: whoever waits for it then waits for this too
                self._afters.append(after)
                self._go = not self._stopping  # the next ones, if prepared (a chain of transactions)
                self._cond.notify_all()

    def _run_afters(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._afters))
                after = self._afters[0]
            try:
                after()
            except Exception:  # the quota mirror is rebuilt from Postgres later
                log.warning("after committing ahead", exc_info=True)
            finally:
                with self._cond:
                    self._afters.pop(0)
                    self._cond.notify_all()

    def _pick(self, heads: Sequence[str]) -> list[tuple[str, _Ahead]]:
        # Under the lock: the jobs of the next transaction ahead, moved to _flight: the first job at the
        # head of the queue that no one has taken care of, if prepared, and the prepared jobs right after it
        # within one transaction's bounds; none while KEEP_ROUNDS rounds wait for rq to hand them over.
        if self._riding:
            return []  # a job's transaction carrying riders is open: it goes ahead once it commits
        passed = {self._current, *self._done}
        rest = itertools.dropwhile(lambda job_id: job_id in passed, heads)
        lead_id = next(rest, None)
        lead = None if lead_id is None else self._ready.get(lead_id)
        if lead_id is None or lead is None:
            if lead_id is not None and lead_id not in self._flight:
                self._want = True  # not prepared yet: the look-ahead wakes this thread once it is
            return []
        room = max(self.merge_events, 1) - lead.events
        picked = [(lead_id, lead), *self._run_of(rest, room, self._max_bytes - lead.size)]
        waiting = sum(done[0].events for done in self._done.values())
        if waiting + sum(a.events for _, a in picked) > KEEP_ROUNDS * self.round_events:
            self._held = True  # `merged_into` lets it go once rq has taken some
            return []
        for job_id, _ in picked:
            self._flight[job_id] = self._ready.pop(job_id)
        return picked

    def _run_of(self, ids: Iterable[str], room: int, room_bytes: int) -> list[tuple[str, _Ahead]]:
        # Under the lock: the prepared jobs at the front of `ids`, in order, up to the first one that is not
        # prepared or does not fit in `room` events and `room_bytes` bytes with those before it (so jobs still
        # commit in queue order). They stay in _ready: the caller takes them.
        run: list[tuple[str, _Ahead]] = []
        for job_id in ids:
            ahead = self._ready.get(job_id)
            if ahead is None or ahead.events > room or ahead.size > room_bytes:
                break
            room -= ahead.events
            room_bytes -= ahead.size
            run.append((job_id, ahead))
        return run

    def _look(self, connection: redis.Redis, job_id: str, room: int | None) -> int | None:
        # prepares one job; returns its events (0 when not prepared), or None when it has more than `room`
        loaded = self._load(connection, job_id)  # a slow Redis delays only this thread, never a job
        if loaded is None:
            return 0
        packed, plain, decoded, size = loaded
        if room is not None and len(decoded[2][0]) > room:
            return None
        with self._cond:
            if job_id in self._taken():
                return 0  # taken and started meanwhile: it validated itself
            self._busy = job_id  # from here on, that job waits for this look-ahead instead of racing it
        prepared = None
        try:
            prepared = self._prepare(decoded[2][0])
        finally:
            with self._cond:
                self._busy = None
                if prepared is not None:
                    self._ready[job_id] = _Ahead(packed, prepared, plain, decoded, size, len(prepared.events))
                    if self._want:
                        self._want, self._go = False, True  # the committer was waiting for the next job
                    # jobs taken by other workers: forget the oldest
                    _trim(self._ready, KEEP_ROUNDS * self.round_events, lambda ahead: ahead.events)
                self._cond.notify_all()
        return len(prepared.events) if prepared is not None else 0

    @staticmethod
    def _next_job_ids(connection: redis.Redis, keys: list[str], skip: set[str | None]) -> list[str]:
        # the jobs a worker takes next are at the head of its first non-empty queue (rq dequeues with LMOVE
        # from the left, in queue order); those already taken care of are passed over
        for key in keys:
            heads = connection.lrange(key, 0, ROUND_JOBS + len(skip) - 1)
            if not heads:
                continue
            return [i for i in map(_text, heads) if i not in skip][:ROUND_JOBS]
        return []

    def _load(self, connection: redis.Redis, job_id: str) -> tuple[bytes, bytes, list[Any], int] | None:
        # the job's payload as rq stores it: zlib-compressed JSON of (function, instance, args, kwargs)
        packed = connection.hget(Job.key_for(job_id), "data")
        if not isinstance(packed, bytes):
            return None
        plain = packed
        with contextlib.suppress(zlib.error):  # else rq's own fallback: a payload stored uncompressed
            plain = zlib.decompress(packed)
        if len(plain) > 2 * self._max_bytes + 1024:
            return None  # far above the byte bound: the job splits it without validating
        decoded = jobspec.PayloadSerializer.loads(plain)  # as rq's JSONSerializer decodes it, faster
        if not isinstance(decoded, list) or len(decoded) != 4 or decoded[0] != jobspec.INGEST_FUNC:
            return None
        args = decoded[2]
        if not isinstance(args, list) or not args or not isinstance(args[0], list):
            return None
        events: list[Any] = args[0]
        size = jobspec.batch_bytes(events)
        if len(events) > self._max_events or size > self._max_bytes:
            return None  # the job splits it without validating
        return packed, plain, decoded, size


def _trim(entries: dict[str, _V], keep: int, events: Callable[[_V], int]) -> None:
    # forget the oldest entries while they hold more than `keep` events (the newest is always kept)
    while len(entries) > 1 and sum(map(events, entries.values())) > keep:
        del entries[next(iter(entries))]


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
