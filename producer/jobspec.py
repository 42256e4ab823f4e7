"""The ingest job's contract between publisher and worker: function path, arguments, rq options."""

from __future__ import annotations

import copy
import json
import os
import zlib
from collections.abc import Sequence
from typing import Any

import pydantic_core
from rq.job import Job
from rq.serializers import JSONSerializer

#: the rq job function; a job's only argument is a list of events, each one event's JSON text as sent
INGEST_FUNC = "worker.jobs.ingest_batch"
#: default queue name (USAGEBILL_QUEUE overrides it)
DEFAULT_QUEUE = "usagebill"
#: seconds an ingest job may run: sized to one batch, well under rq's 180 s default, so a killed job's
#: started-registry entry expires (timeout + 60 s for a non-forking worker) and is retried soon
JOB_TIMEOUT = 60
#: rq Retry: attempts and their delays (seconds) for a failed batch
RETRY_MAX = 8
RETRY_INTERVALS = (1, 2, 5, 15, 30, 60, 120, 300)
#: keep results briefly and failures effectively for ever (rq's default failure_ttl is one year)
RESULT_TTL = 600
FAILURE_TTL = 10 * 365 * 24 * 3600


def job_options(events: Sequence[Any]) -> dict[str, Any]:
    """The rq options of an ingest job carrying `events` (its Retry aside: RETRY_MAX, RETRY_INTERVALS).

    The description names the event count: without one, rq builds it from the repr of the whole batch
    (then cuts it to 75 characters), ~0.5 us per event of the publisher's CPU.
    """
    return {
        "timeout": JOB_TIMEOUT,
        "result_ttl": RESULT_TTL,
        "failure_ttl": FAILURE_TTL,
        "description": f"{INGEST_FUNC}(<{len(events)} events>)",
    }


#: zlib level of a published job's payload: rq compresses at zlib's default (6); level 1 took ~1.8 ms
#: instead of ~4.4 ms per 1000-event job (~0.45 MB of JSON), for a payload ~35% larger (50 vs 37 kB)
PAYLOAD_ZLIB_LEVEL = 1


class PublishedJob(Job):
    """An ingest job as a publisher saves it: rq's own format (its JSON payload as a zlib stream, which any
    rq worker reads), compressed at PAYLOAD_ZLIB_LEVEL: on the app's host, compression was ~40% of the
    CPU of enqueueing a batch."""

    def to_dict(self, include_meta: bool = True, include_result: bool = True) -> dict[str, Any]:
        stored = zlib.compress(self.data, PAYLOAD_ZLIB_LEVEL)
        return dict_with_payload(self, stored, include_meta=include_meta, include_result=include_result)


class EncodedBatch(list[Any]):
    """A job's events with each one's JSON form as the job's payload writes it (`json.dumps` of it), which
    the publisher makes anyway to bound the batch in bytes: PayloadSerializer joins them instead of
    encoding the events again."""

    __slots__ = ("encoded",)

    def __init__(self, events: list[Any], encoded: list[str]) -> None:
        super().__init__(events)
        self.encoded = encoded


class PayloadSerializer(JSONSerializer):
    """rq's JSONSerializer, byte for byte and value for value: what it writes any rq worker reads, and what it
    reads is what rq's would make of the same bytes.

    It joins the payload of an ingest job from its EncodedBatch's pieces (encoding the batch again was ~2 us
    per event, ~30% of the CPU of publishing it), and decodes with pydantic-core's parser (~0.8 instead of
    ~1.7 ms per 1000-event job). That parser refuses a text `json.loads` takes in one corner (a lone
    surrogate escape, e.g. an event "\\udc80"): that text, and anything else it refuses, is decoded by rq's
    own serializer, with rq's errors.
    """

    @staticmethod
    def dumps(obj: Any, *args: Any, **kwargs: Any) -> bytes:
        joined = None if args or kwargs else _joined(obj)
        return joined if joined is not None else JSONSerializer.dumps(obj, *args, **kwargs)  # type: ignore[no-untyped-call]

    @staticmethod
    def loads(s: bytes, *args: Any, **kwargs: Any) -> Any:
        if not args and not kwargs:
            try:
                return pydantic_core.from_json(s, cache_strings=False)
            except ValueError:
                pass
        return JSONSerializer.loads(s, *args, **kwargs)  # type: ignore[no-untyped-call]


def _joined(obj: Any) -> bytes | None:
    # rq serializes a job as (function name, instance, args, kwargs); `json.dumps` writes it with ", " between
    # items and the batch's items as their own `json.dumps`, which EncodedBatch.encoded holds
    if type(obj) is not tuple or len(obj) != 4:
        return None
    func, instance, args, kwargs = obj
    if type(func) is not str or instance is not None or type(kwargs) is not dict or kwargs:
        return None
    if type(args) not in (list, tuple) or len(args) != 1:
        return None
    batch = args[0]
    if type(batch) is not EncodedBatch or len(batch.encoded) != len(batch):
        return None
    return f"[{json.dumps(func)}, null, [[{', '.join(batch.encoded)}]], {{}}]".encode()


def dict_with_payload(job: Job, stored: bytes, *, include_meta: bool, include_result: bool) -> dict[str, Any]:
    """rq's `Job.to_dict` of `job` (what rq saves in the job's hash) with `stored` as its payload, as is.

    rq compresses `job.data` itself; a shallow copy with no payload gives it nothing to compress, and the
    job is never left without its payload, whichever thread looks at it meanwhile."""
    bare = copy.copy(job)
    bare._data = b""
    obj = Job.to_dict(bare, include_meta=include_meta, include_result=include_result)
    obj["data"] = stored
    return obj


def batch_bytes(events: list[Any]) -> int:
    """A job's size as USAGEBILL_BATCH_MAX_BYTES bounds it: the length of its events' JSON texts."""
    return sum(len(e) for e in events if isinstance(e, str))


def queue_name() -> str:
    """The ingest queue, from USAGEBILL_QUEUE (read at the edge by the publisher and the worker)."""
    return os.environ.get("USAGEBILL_QUEUE", DEFAULT_QUEUE)
