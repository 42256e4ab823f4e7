"""An ingest job's payload: the publisher writes it as rq's JSONSerializer does, the look-ahead reads it as it does."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, cast

import pytest
from redis import Redis
from rq.serializers import JSONSerializer

from producer import Publisher, jobspec

# texts as an app sends them: quotes, backslashes, control characters, non-ASCII (sent as is or \u-escaped),
# astral characters, an empty text, and a lone surrogate escape (valid JSON that json.loads takes)
TEXTS = [
    json.dumps({"event_id": "a", "note": 'quote " backslash \\ tab \t nl \n \x01'}),
    json.dumps({"event_id": "b", "note": "\u00e9\U0001f600 \u2028"}, ensure_ascii=False),
    json.dumps({"event_id": "c", "note": "\u00e9\U0001f600"}),
    "",
    '{"event_id": "d", "note": "\\udc80"}',
    "not json at all",
]


def _publisher(**kw: object) -> Publisher:
    return Publisher(
        redis_url="redis://127.0.0.1:1/0", spool_dir="/nonexistent/never-created", handle_sigterm=False, **kw
    )


def _job(batch: list[Any]) -> tuple[Any, ...]:
    # what rq serializes for a job: (function name, instance, args, kwargs)
    return (jobspec.INGEST_FUNC, None, [batch], {})


def test_the_publisher_joins_each_payload_from_the_pieces_it_measured() -> None:
    pub = _publisher(batch_size=4)
    items = cast(Sequence[str], [*TEXTS, {"event_id": "dict", "n": 1.5}, *TEXTS])
    batches = pub._batches(items)
    pub.close()
    assert [len(b) for b in batches] == [4, 4, 4, 1]
    for batch in batches:
        assert type(batch) is jobspec.EncodedBatch
        joined = jobspec._joined(_job(batch))
        assert joined is not None  # the fast path, not rq's encoding
        assert joined == JSONSerializer.dumps(_job(list(batch)))  # type: ignore[no-untyped-call]
        assert jobspec.PayloadSerializer.dumps(_job(batch)) == joined


def test_an_rq_job_saves_the_joined_payload() -> None:
    pub = _publisher(batch_size=10)
    (batch,) = pub._batches(TEXTS)
    pub.close()
    job = jobspec.PublishedJob.create(
        jobspec.INGEST_FUNC,
        args=[batch],
        connection=Redis.from_url("redis://127.0.0.1:1/0"),  # never connected: nothing is saved
        serializer=jobspec.PayloadSerializer,
    )
    assert job.data == JSONSerializer.dumps(_job(list(batch)))  # type: ignore[no-untyped-call]
    assert JSONSerializer.loads(job.data)[2] == [TEXTS]  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    "obj",
    [
        _job(list(TEXTS)),  # a plain list: nothing measured
        (jobspec.INGEST_FUNC, None, [jobspec.EncodedBatch(TEXTS, [])], {}),  # pieces missing
        (jobspec.INGEST_FUNC, None, [jobspec.EncodedBatch(TEXTS[:2], [json.dumps(t) for t in TEXTS[:2]])], {"k": 1}),
        (jobspec.INGEST_FUNC, "instance", [jobspec.EncodedBatch([], [])], {}),
        {"meta": "data"},  # rq serializes a job's meta with the same serializer
    ],
)
def test_anything_else_is_encoded_by_rq_json(obj: Any) -> None:
    assert jobspec._joined(obj) is None
    assert jobspec.PayloadSerializer.dumps(obj) == JSONSerializer.dumps(obj)  # type: ignore[no-untyped-call]


def test_a_batch_changed_after_it_was_cut_is_encoded_by_rq_json() -> None:
    pub = _publisher(batch_size=10)
    (batch,) = pub._batches(TEXTS[:2])
    pub.close()
    batch.append("late")
    assert jobspec._joined(_job(batch)) is None
    assert jobspec.PayloadSerializer.dumps(_job(batch)) == JSONSerializer.dumps(_job(list(batch)))  # type: ignore[no-untyped-call]


def test_the_look_ahead_decodes_a_payload_as_rq_does() -> None:
    for payload in (
        JSONSerializer.dumps(_job(list(TEXTS))),  # type: ignore[no-untyped-call]  # the lone surrogate: rq's fallback
        JSONSerializer.dumps(_job(TEXTS[:3])),  # type: ignore[no-untyped-call]  # pydantic-core's parser
        b'[1e400, NaN, -0.0, 123456789012345678901234567890, {"a": 1, "a": 2}]',
    ):
        decoded = jobspec.PayloadSerializer.loads(payload)
        assert repr(decoded) == repr(JSONSerializer.loads(payload))  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("payload", [b"[1] trailing", b"\xff\xfe", b'["\xe9"]', b""])
def test_a_payload_rq_cannot_decode_raises_rq_s_error(payload: bytes) -> None:
    with pytest.raises(ValueError) as expected:
        JSONSerializer.loads(payload)  # type: ignore[no-untyped-call]
    with pytest.raises(type(expected.value)):
        jobspec.PayloadSerializer.loads(payload)
