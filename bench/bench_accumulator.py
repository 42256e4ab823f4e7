"""Time `UsageAccumulator.add` per chunk over a long OpenAI chat stream, against plain iteration.

A realistic stream: N content chunks (usage null, as with stream_options.include_usage), one finish
chunk and one final usage chunk. The same chunks are timed as dicts (JSON/SSE) and as openai SDK
`ChatCompletionChunk` objects, with and without a provider hint. Prints µs/chunk and the overhead
over a loop that only iterates the chunks. Run: .venv/bin/python bench/bench_accumulator.py [N]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from producer.extract import UsageAccumulator

try:
    from openai.types.chat import ChatCompletionChunk
except ImportError:  # the bench still runs for dicts without the SDK
    ChatCompletionChunk = None  # type: ignore[assignment,misc]

REPEATS = 7


def make_stream(n: int) -> list[dict[str, Any]]:
    base = {
        "id": "chatcmpl-D8Z5oo6uDh67AD85p73ksdT1KxhE0",
        "object": "chat.completion.chunk",
        "created": 1770933892,
        "model": "gpt-4.1-nano-2025-04-14",
        "service_tier": "default",
        "system_fingerprint": "fp_de604bd877",
    }
    words = ["Holiday", " respect", " the", " stars", ",", " and", " night", "."]
    chunks = [
        {
            **base,
            "choices": [
                {"index": 0, "delta": {"content": words[i % len(words)]}, "logprobs": None, "finish_reason": None}
            ],
            "usage": None,
            "obfuscation": "yhjoJbEF",
        }
        for i in range(n)
    ]
    chunks.append(
        {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}], "usage": None}
    )
    chunks.append(
        {
            **base,
            "choices": [],
            "usage": {
                "prompt_tokens": 16,
                "completion_tokens": n,
                "total_tokens": 16 + n,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
            },
        }
    )
    return chunks


def best_ns(fn: Callable[[], object]) -> int:
    # CPU time of this process, best of REPEATS: on a shared machine wall time mostly measures the neighbours.
    best = None
    for _ in range(REPEATS):
        start = time.process_time_ns()
        fn()
        elapsed = time.process_time_ns() - start
        best = elapsed if best is None or elapsed < best else best
    assert best is not None
    return best


def iterate(chunks: list[Any]) -> None:
    for _chunk in chunks:
        pass


def accumulate(chunks: list[Any], provider: str | None) -> UsageAccumulator:
    acc = UsageAccumulator(provider)
    for chunk in chunks:
        acc.add(chunk)
    return acc


def noop(chunk: Any) -> None:
    return None


def call_per_chunk(chunks: list[Any]) -> None:
    for chunk in chunks:
        noop(chunk)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    dicts = make_stream(n)
    kinds: list[tuple[str, list[Any]]] = [("dict", dicts)]
    if ChatCompletionChunk is None:
        print("openai not installed: SDK objects skipped", file=sys.stderr)
    else:
        kinds.append(("openai ChatCompletionChunk", [ChatCompletionChunk.model_validate(c) for c in dicts]))
    total = len(dicts)
    print(f"stream: {n} content chunks + finish + usage chunk = {total} chunks; CPU time, best of {REPEATS} runs")
    # How fast this machine is: one empty Python function call per chunk.
    reference = (best_ns(partial(call_per_chunk, dicts)) - best_ns(partial(iterate, dicts))) / total
    print(f"reference: one empty function call {reference:.0f} ns")
    for kind, chunks in kinds:
        for provider in (None, "openai"):
            acc = accumulate(chunks, provider)
            usage = acc.usage
            assert usage is not None and usage.output_tokens == n and usage.input_tokens == 16, usage
            assert acc.model == "gpt-4.1-nano-2025-04-14" and acc.service_tier == "default"
            base = best_ns(partial(iterate, chunks))
            run = best_ns(partial(accumulate, chunks, provider))
            per_chunk = run / total / 1000
            overhead = (run - base) / total / 1000
            print(
                f"{kind:<28} provider={provider!s:<7} plain loop {base / total:6.1f} ns/chunk | "
                f"add {per_chunk:5.3f} µs/chunk | overhead {overhead:5.3f} µs/chunk"
            )


if __name__ == "__main__":
    main()
