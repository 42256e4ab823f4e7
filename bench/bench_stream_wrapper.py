"""Time the stream wrapper's cost per chunk against plain iteration of the same chunks (goal <= 2 µs/chunk).

Streams of N chunks as the SDKs deliver them: openai `ChatCompletionChunk` objects (content chunks,
a finish chunk, the final usage chunk), the same chunks as dicts, anthropic stream events, and raw
SSE lines. Each is iterated plainly and through the wrapper (`instrument()`'s selector for SDK
chunks, `track_stream` for dicts, `track_sse_lines` for lines); the wrapped time includes the one
event built at the end (publishing goes to a no-op). Best of REPEATS runs, same process, same data,
timed in CPU time (`time.process_time`): on a shared, loaded machine wall time swings several-fold.
Run: .venv/bin/python bench/bench_stream_wrapper.py [N]
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from anthropic._models import construct_type
from anthropic.types import RawMessageStreamEvent
from openai.types.chat import ChatCompletionChunk

from producer.context import CallContext
from producer.event import UsageEvent
from producer.sse import track_sse_lines
from producer.streams import AsyncTrackedStream, TrackedStream, _Call, _chat_wants, _event_wants, track_stream

REPEATS = 7
CTX = CallContext(org_id="bench")


def noop(event: UsageEvent) -> None:
    pass


def chat_dicts(n: int) -> list[dict[str, Any]]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1770933892, "model": "gpt-4o-mini"}
    out: list[dict[str, Any]] = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}], "usage": None}
    ]
    for i in range(1, n - 2):
        out.append(
            {**base, "choices": [{"index": 0, "delta": {"content": f" w{i}"}, "finish_reason": None}], "usage": None}
        )
    out.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": None})
    out.append(
        {
            **base,
            "choices": [],
            "usage": {
                "prompt_tokens": 20,
                "completion_tokens": n,
                "total_tokens": 20 + n,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
        }
    )
    return out


def anthropic_dicts(n: int) -> list[dict[str, Any]]:
    usage = {"input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    start = {
        "type": "message_start",
        "message": {
            "id": "m",
            "type": "message",
            "role": "assistant",
            "model": "claude-haiku-4-5",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        },
    }
    out: list[dict[str, Any]] = [
        start,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    ]
    out += [
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": f" w{i}"}}
        for i in range(n - 4)
    ]
    out.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": n},
        }
    )
    out.append({"type": "message_stop"})
    return out


def best(fn: Callable[[], None]) -> float:
    times = []
    for _ in range(REPEATS):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def plain(chunks: list[Any]) -> Callable[[], None]:
    def run() -> None:
        for _ in chunks:
            pass

    return run


def wrapped_sdk(chunks: list[Any], provider: str, wants: Any) -> Callable[[], None]:
    def run() -> None:
        call = _Call(provider=provider, request={"model": "m"}, context=CTX, publish=noop)
        for _ in TrackedStream(chunks, call, wants):
            pass

    return run


def wrapped_generic(chunks: list[Any], provider: str) -> Callable[[], None]:
    def run() -> None:
        for _ in track_stream(chunks, provider=provider, org_id="bench", publish=noop):
            pass

    return run


def wrapped_lines(lines: list[str], provider: str) -> Callable[[], None]:
    def run() -> None:
        for _ in track_sse_lines(lines, provider=provider, org_id="bench", publish=noop):
            pass

    return run


def sse_lines(chunks: list[dict[str, Any]], events: bool) -> list[str]:
    lines: list[str] = []
    for c in chunks:
        if events:
            lines.append(f"event: {c['type']}")
        lines.append("data: " + json.dumps(c))
        lines.append("")
    if not events:
        lines += ["data: [DONE]", ""]
    return lines


def report(label: str, n: int, base: float, wrapped: float) -> None:
    per_plain = base / n * 1e6
    per_wrapped = wrapped / n * 1e6
    print(
        f"{label:<44} plain {per_plain:7.3f} µs/chunk   wrapped {per_wrapped:7.3f} µs/chunk   "
        f"overhead {per_wrapped - per_plain:6.3f} µs/chunk"
    )


def async_overhead(chunks: list[Any], n: int) -> tuple[float, float]:
    class Source:
        def __init__(self) -> None:
            self.it = iter(chunks)

        def __aiter__(self) -> Source:
            return self

        async def __anext__(self) -> Any:
            try:
                return next(self.it)
            except StopIteration:
                raise StopAsyncIteration from None

    async def plain_run() -> None:
        async for _ in Source():
            pass

    async def wrapped_run() -> None:
        call = _Call(provider="openai", request={"model": "m"}, context=CTX, publish=noop)
        async for _ in AsyncTrackedStream(Source(), call, _chat_wants):
            pass

    def timed(coro_fn: Callable[[], Any]) -> float:
        times = []
        for _ in range(REPEATS):
            t0 = time.process_time()
            asyncio.run(coro_fn())
            times.append(time.process_time() - t0)
        return min(times)

    return timed(plain_run), timed(wrapped_run)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000

    dicts = chat_dicts(n)
    sdk = [ChatCompletionChunk.model_validate(d) for d in dicts]
    adicts = anthropic_dicts(n)
    asdk = [construct_type(type_=RawMessageStreamEvent, value=d) for d in adicts]

    # warm up: imports, encodings, accumulator tables
    wrapped_sdk(sdk[:10], "openai", _chat_wants)()
    wrapped_generic(dicts[:10], "openai")()

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"stream wrapper, {n} chunks per stream, best of {REPEATS}, Python {sys.version.split()[0]}, load {load}")
    report(
        "openai ChatCompletionChunk (instrument)", n, best(plain(sdk)), best(wrapped_sdk(sdk, "openai", _chat_wants))
    )
    report(
        "anthropic stream events (instrument)", n, best(plain(asdk)), best(wrapped_sdk(asdk, "anthropic", _event_wants))
    )
    report("openai chunks as dicts (track_stream)", n, best(plain(dicts)), best(wrapped_generic(dicts, "openai")))
    report(
        "anthropic events as dicts (track_stream)", n, best(plain(adicts)), best(wrapped_generic(adicts, "anthropic"))
    )
    lines = sse_lines(dicts, events=False)
    report(
        f"openai SSE, {len(lines) / n:.0f} lines/chunk (track_sse_lines)",
        n,
        best(plain(lines)),
        best(wrapped_lines(lines, "openai")),
    )
    alines = sse_lines(adicts, events=True)
    report(
        f"anthropic SSE, {len(alines) / n:.0f} lines/chunk (track_sse_lines)",
        n,
        best(plain(alines)),
        best(wrapped_lines(alines, "anthropic")),
    )
    base, wrapped = async_overhead(sdk, n)
    report("openai chunks, async (AsyncTrackedStream)", n, base, wrapped)


if __name__ == "__main__":
    main()
