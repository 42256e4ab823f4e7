"""Every streamed corpus payload through the stream wrappers (dict chunks, SDK chunks, raw SSE lines):
the published event carries the usage the provider reported, wherever that provider puts it."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
from openai._models import construct_type

import producer
from producer.event import UsageEvent
from producer.usage import Usage
from tests.conftest import CORPUS

FILES = sorted(CORPUS.glob("*/*.json")) if CORPUS.is_dir() else []
STREAMS = [f for f in FILES if json.loads(f.read_text())["streaming"]]


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(), parse_float=Decimal)


def _expected_event_usage(expected: dict[str, Any]) -> dict[str, Any] | None:
    if expected["input_tokens"] is None:
        return None
    usage = Usage(
        input_tokens=expected["input_tokens"],
        cached_input_tokens=expected["cached_input_tokens"],
        cache_write_tokens=expected["cache_write_tokens"],
        output_tokens=expected["output_tokens"],
        reasoning_tokens=expected["reasoning_tokens"],
        provider_cost=None if expected["provider_cost"] is None else Decimal(str(expected["provider_cost"])),
    )
    counts, _ = producer.repair_usage(usage)  # what an event carries (the documented repair)
    return counts


def _check(event: UsageEvent, expected: dict[str, Any], name: str) -> None:
    want = _expected_event_usage(expected)
    if want is None:
        assert event.estimated, f"{name}: no usage reported, so the event must be an estimate"
        return
    assert not event.estimated, f"{name}: the provider reported usage; it must not be estimated"
    got = event.usage
    for key in ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens"):
        assert getattr(got, key) == want[key], f"{name}: {key}"
    cost = None if want["provider_cost"] is None else Decimal(want["provider_cost"])
    assert got.provider_cost == cost, f"{name}: provider_cost"


class Events(list[UsageEvent]):
    def __call__(self, event: UsageEvent) -> None:
        self.append(event)


def _chunks(doc: dict[str, Any]) -> list[Any]:
    # Groq's stored error event {"event": "error", "data": {...}} is the SSE event, not a chunk
    return [c["data"] if isinstance(c, dict) and set(c) == {"event", "data"} else c for c in doc["payload"]]


@pytest.mark.skipif(not STREAMS, reason="the provider corpus (../shared/provider-corpus) is not present")
@pytest.mark.parametrize("path", STREAMS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_dict_chunks_through_track_stream(path: Path) -> None:
    doc = _load(path)
    events = Events()
    stream = producer.track_stream(
        iter(_chunks(doc)),
        provider=doc["provider"],
        model="m",
        org_id="o",
        publish=events,
        request={"messages": [{"role": "user", "content": "hi"}]},
    )
    assert list(stream) == _chunks(doc)
    assert len(events) == 1
    _check(events[0], doc["expected"], path.name)


@pytest.mark.skipif(not STREAMS, reason="the provider corpus (../shared/provider-corpus) is not present")
@pytest.mark.parametrize("path", STREAMS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_raw_sse_lines(path: Path) -> None:
    doc = _load(path)
    lines: list[str] = []
    for chunk in doc["payload"]:
        if isinstance(chunk, dict) and set(chunk) == {"event", "data"}:
            lines += [f"event: {chunk['event']}", f"data: {json.dumps(chunk['data'], default=str)}", ""]
            continue
        if isinstance(chunk, dict) and isinstance(chunk.get("type"), str):
            lines.append(f"event: {chunk['type']}")
        lines += [f"data: {json.dumps(chunk, default=str)}", ""]
    lines += ["data: [DONE]", ""]
    events = Events()
    out = list(producer.track_sse_lines(iter(lines), provider=doc["provider"], model="m", org_id="o", publish=events))
    assert out == lines
    assert len(events) == 1
    _check(events[0], doc["expected"], path.name)


CHAT_STREAMS = [p for p in STREAMS if json.loads(p.read_text())["api"] == "chat.completions"]


@pytest.mark.skipif(not CHAT_STREAMS, reason="the provider corpus (../shared/provider-corpus) is not present")
@pytest.mark.parametrize("path", CHAT_STREAMS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_openai_sdk_chunks(path: Path) -> None:
    doc = json.loads(path.read_text())  # SDK objects are built from plain JSON, as the SDK does
    chunks = []
    for raw in _chunks(doc):
        if "choices" not in raw:
            continue  # e.g. an error event: not a chat chunk
        # what the SDK itself does with each SSE chunk: construct without validation, extras kept
        chunks.append(construct_type(type_=openai.types.chat.ChatCompletionChunk, value=raw))
    events = Events()
    stream = producer.track_stream(
        iter(chunks),
        provider=doc["provider"],
        model="m",
        org_id="o",
        publish=events,
        request={"messages": [{"role": "user", "content": "hi"}]},
    )
    assert list(stream) == chunks
    assert len(events) == 1
    _check(events[0], doc["expected"], path.name)
