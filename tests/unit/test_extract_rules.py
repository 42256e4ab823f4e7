"""The corpus RULES on payloads the corpus does not have: other field orders, unknown fields, nulls, zeros,
huge counts, other provider names, stream and non-stream variants, SDK objects.

Every expected value below was derived by hand from ../shared/provider-corpus/README.md and DESIGN.md
("Normalized usage"), never by running the extractor. Each case names the rule it exercises.
Stream cases run through every entry point: `UsageAccumulator`, `extract_usage(list)`, `track_stream`
(dict chunks) and `track_sse_lines` (the same chunks as raw SSE lines).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from anthropic._models import construct_type as anthropic_construct
from anthropic.types import Message, RawMessageStreamEvent
from openai._models import construct_type as openai_construct
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel, ConfigDict

import producer
from producer import Usage, UsageAccumulator, extract_service_tier, extract_usage
from producer.event import UsageEvent

#: (input, cached, cache_write, output, reasoning, cache_write_1h, provider_cost)
Expected = tuple[int, int, int, int, int, int, Decimal | None]


def counts(usage: Usage | None) -> Expected | None:
    if usage is None:
        return None
    return (
        usage.input_tokens,
        usage.cached_input_tokens,
        usage.cache_write_tokens,
        usage.output_tokens,
        usage.reasoning_tokens,
        usage.cache_write_1h_tokens,
        usage.provider_cost,
    )


def E(inp: int, cached: int, write: int, out: int, reasoning: int, w1h: int = 0, cost: str | None = None) -> Expected:
    return (inp, cached, write, out, reasoning, w1h, None if cost is None else Decimal(cost))


class Events(list[UsageEvent]):
    def __call__(self, event: UsageEvent) -> None:
        self.append(event)


REQUEST = {"messages": [{"role": "user", "content": "hi"}]}


def event_counts(event: UsageEvent) -> Expected | None:
    if event.estimated:
        return None
    u = event.usage
    cost = None if u.provider_cost is None else Decimal(str(u.provider_cost))
    return (
        u.input_tokens,
        u.cached_input_tokens,
        u.cache_write_tokens,
        u.output_tokens,
        u.reasoning_tokens,
        u.cache_write_1h_tokens,
        cost,
    )


def sse_lines(chunks: list[Any]) -> list[str]:
    lines: list[str] = []
    for chunk in chunks:
        if isinstance(chunk, dict) and set(chunk) == {"event", "data"}:
            lines += [f"event: {chunk['event']}", f"data: {json.dumps(chunk['data'])}", ""]
            continue
        if isinstance(chunk, dict) and isinstance(chunk.get("type"), str):
            lines.append(f"event: {chunk['type']}")
        lines += [f"data: {json.dumps(chunk)}", ""]
    return [*lines, "data: [DONE]", ""]


def stream_results(chunks: list[Any], provider: str | None) -> dict[str, Expected | None]:
    """The usage of one stream through every entry point, by entry point."""
    acc = UsageAccumulator(provider)
    for chunk in chunks:
        acc.add(chunk)
    results = {"accumulator": counts(acc.usage), "extract_usage": counts(extract_usage(chunks, provider))}
    name = provider or "someone"
    events = Events()
    raw = [c["data"] if isinstance(c, dict) and set(c) == {"event", "data"} else c for c in chunks]
    out = list(producer.track_stream(iter(raw), provider=name, org_id="o", publish=events, request=REQUEST))
    assert out == raw and len(events) == 1
    results["track_stream"] = event_counts(events[0])
    events = Events()
    lines = sse_lines(chunks)
    assert list(producer.track_sse_lines(iter(lines), provider=name, org_id="o", publish=events)) == lines
    assert len(events) == 1
    results["track_sse_lines"] = event_counts(events[0])
    return results


def assert_stream(chunks: list[Any], provider: str | None, expected: Expected | None) -> None:
    results = stream_results(chunks, provider)
    assert results == dict.fromkeys(results, expected)


def chat(usage: Any, **extra: Any) -> dict[str, Any]:
    """A non-stream chat completion; keys deliberately not in OpenAI's order."""
    return {
        "usage": usage,
        "model": extra.pop("model", "m-1"),
        "choices": [{"finish_reason": "stop", "message": {"content": "ok", "role": "assistant"}, "index": 0}],
        "object": "chat.completion",
        "id": "c-1",
        **extra,
    }


def chunk(content: str | None = None, *, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {
        "id": "c-1",
        "object": "chat.completion.chunk",
        "model": extra.pop("model", "m-1"),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


def usage_chunk(usage: Any, **extra: Any) -> dict[str, Any]:
    return {"id": "c-1", "object": "chat.completion.chunk", "model": "m-1", "choices": [], "usage": usage, **extra}


# --- OpenAI Chat Completions and compatible servers ------------------------------------------------


@pytest.mark.parametrize("provider", [None, "openai", "azure-openai", "zai", "vllm", "some-gateway"])
def test_chat_cached_write_reasoning_are_subsets_and_rejected_prediction_is_output(provider: str | None) -> None:
    # rule: prompt_tokens includes cached and cache_write; completion_tokens includes reasoning and rejected
    usage = {
        "total_tokens": 5800,
        "completion_tokens_details": {
            "rejected_prediction_tokens": 100,
            "reasoning_tokens": 500,
            "accepted_prediction_tokens": 50,
            "audio_tokens": 0,
        },
        "completion_tokens": 800,
        "prompt_tokens_details": {"cache_write_tokens": 1000, "audio_tokens": 7, "cached_tokens": 3000},
        "prompt_tokens": 5000,
        "some_future_field": {"nested": [1, 2]},
    }
    assert counts(extract_usage(chat(usage), provider)) == E(5000, 3000, 1000, 800, 500)


@pytest.mark.parametrize("provider", [None, "openai", "mistral", "groq"])
def test_chat_null_details_are_zero_breakdowns(provider: str | None) -> None:
    # rule: details that are null give no breakdown (0), the counts are still a value
    usage = {
        "prompt_tokens": 20,
        "completion_tokens": 10,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }
    assert counts(extract_usage(chat(usage), provider)) == E(20, 0, 0, 10, 0)
    nulls = {
        "prompt_tokens": 20,
        "completion_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": None, "cache_write_tokens": None},
        "completion_tokens_details": {"reasoning_tokens": None},
        "total_tokens": None,
    }
    assert counts(extract_usage(chat(nulls), provider)) == E(20, 0, 0, 10, 0)


@pytest.mark.parametrize("provider", [None, "openai", "xai", "deepseek", "anthropic"])
def test_chat_missing_usage_is_none_not_zero(provider: str | None) -> None:
    # rule: missing / null usage -> unknown (None); explicit zeros are a value
    assert extract_usage(chat(None), provider) is None
    no_key = chat(None)
    del no_key["usage"]
    assert extract_usage(no_key, provider) is None
    assert (
        extract_usage(chat({"prompt_tokens": None, "completion_tokens": None, "total_tokens": None}), provider) is None
    )
    zero = {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert counts(extract_usage(chat(zero), provider)) == E(0, 0, 0, 0, 0)


def test_chat_very_large_and_integral_float_counts() -> None:
    # rule: counts are reported as they are (< 2^63); a JSON number like 12.0 is the count 12
    big = 2**62 + 3
    usage = {"prompt_tokens": big, "completion_tokens": 12.0, "prompt_tokens_details": {"cached_tokens": big - 1}}
    assert counts(extract_usage(chat(usage))) == E(big, big - 1, 0, 12, 0)


@pytest.mark.parametrize("provider", [None, "deepseek", "openrouter"])
def test_deepseek_cache_hit_without_details(provider: str | None) -> None:
    # rule: DeepSeek cached = prompt_cache_hit_tokens (prompt = hit + miss); nothing is a cache write
    usage = {
        "prompt_cache_miss_tokens": 80,
        "prompt_cache_hit_tokens": 896,
        "completion_tokens": 61,
        "prompt_tokens": 976,
        "completion_tokens_details": {"reasoning_tokens": 25},
    }
    assert counts(extract_usage(chat(usage), provider)) == E(976, 896, 0, 61, 25)
    # the mirror present but null: the hit count still counts
    mirrored = {**usage, "prompt_tokens_details": {"cached_tokens": None}}
    assert counts(extract_usage(chat(mirrored), provider)) == E(976, 896, 0, 61, 25)


@pytest.mark.parametrize("provider", [None, "deepseek"])
def test_deepseek_stream_usage_on_the_finish_chunk(provider: str | None) -> None:
    # rule: DeepSeek streams put usage on the final chunk WITH finish_reason (choices not empty)
    usage: dict[str, Any] = {
        "prompt_tokens": 339,
        "completion_tokens": 83,
        "prompt_cache_hit_tokens": 320,
        "prompt_cache_miss_tokens": 19,
    }
    usage["completion_tokens_details"] = {"reasoning_tokens": 39}
    chunks = [chunk("a", usage=None), chunk("b", usage=None), chunk(finish="stop", usage=usage)]
    assert_stream(chunks, provider, E(339, 320, 0, 83, 39))


@pytest.mark.parametrize("provider", [None, "huggingface", "hf", "moonshot"])
def test_top_level_cached_tokens(provider: str | None) -> None:
    # rule: HF router / Moonshot report cached reads as a top-level usage.cached_tokens
    usage = {"cached_tokens": 512, "completion_tokens": 9, "prompt_tokens": 700, "total_tokens": 709}
    assert counts(extract_usage(chat(usage), provider)) == E(700, 512, 0, 9, 0)


@pytest.mark.parametrize("provider", [None, "moonshot", "kimi"])
def test_moonshot_stream_usage_inside_the_choice_with_other_choice_keys(provider: str | None) -> None:
    # rule: Moonshot streams put usage inside choices[0] of the finish chunk
    usage = {"total_tokens": 1237, "cached_tokens": 1024, "completion_tokens": 37, "prompt_tokens": 1200}
    final = chunk(finish="stop")
    final["choices"][0] = {"usage": usage, "finish_reason": "stop", "delta": {}, "index": 0, "logprobs": None}
    assert_stream([chunk("a"), chunk("b"), final], provider, E(1200, 1024, 0, 37, 0))


@pytest.mark.parametrize("provider", [None, "azure-ai-foundry", "azure"])
def test_foundry_top_level_reasoning_tokens(provider: str | None) -> None:
    # rule: Azure AI Foundry reports a non-standard top-level usage.reasoning_tokens (subset of completion)
    usage = {"prompt_tokens": 19, "total_tokens": 1739, "completion_tokens": 1720, "reasoning_tokens": 1500}
    assert counts(extract_usage(chat(usage), provider)) == E(19, 0, 0, 1720, 1500)


@pytest.mark.parametrize("provider", [None, "openrouter", "avian"])
def test_provider_cost_in_usage_cost(provider: str | None) -> None:
    # rule: provider_cost is usage.cost (USD) as its exact decimal text; cost_details are not used
    usage = {
        "prompt_tokens": 3329,
        "completion_tokens": 53,
        "cost": 0.00219855,
        "is_byok": False,
        "cost_details": {"upstream_inference_cost": 0.0021},
        "prompt_tokens_details": {"cached_tokens": 3211, "cache_write_tokens": 115},
    }
    assert counts(extract_usage(chat(usage), provider)) == E(3329, 3211, 115, 53, 0, cost="0.00219855")
    # a free / BYOK call reports a cost of 0: a value, not "no cost"
    assert counts(extract_usage(chat({**usage, "cost": 0}), provider)) == E(3329, 3211, 115, 53, 0, cost="0")
    # an older response without cost: None, never computed from a price table
    no_cost = {k: v for k, v in usage.items() if k != "cost"}
    assert counts(extract_usage(chat(no_cost), provider)) == E(3329, 3211, 115, 53, 0)


@pytest.mark.parametrize("provider", [None, "openrouter"])
def test_openrouter_stream_cost_on_the_usage_chunk(provider: str | None) -> None:
    # rule: running totals, take the last report; provider_cost from usage.cost
    usage = {
        "prompt_tokens": 43,
        "completion_tokens": 36,
        "total_tokens": 79,
        "cost": 0.000669,
        "completion_tokens_details": {"reasoning_tokens": 13},
    }
    chunks = [chunk("a"), chunk(finish="stop"), usage_chunk(usage)]
    assert_stream(chunks, provider, E(43, 0, 0, 36, 13, cost="0.000669"))


def test_perplexity_cost_object_is_no_provider_cost() -> None:
    # rule: provider_cost is only the providers' USD `usage.cost` number (OpenRouter, Avian) or xAI ticks
    usage = {
        "prompt_tokens": 11,
        "completion_tokens": 434,
        "total_tokens": 445,
        "search_context_size": "low",
        "cost": {"input_tokens_cost": 0.0, "output_tokens_cost": 0.0004, "request_cost": 0.005, "total_cost": 0.0054},
    }
    assert counts(extract_usage(chat(usage), "perplexity")) == E(11, 0, 0, 434, 0)


# --- streams: running totals, where usage rides, what is ignored ------------------------------------


@pytest.mark.parametrize("provider", [None, "perplexity", "vllm", "qwen"])
def test_cumulative_usage_in_every_chunk_takes_the_last(provider: str | None) -> None:
    # streaming rule 1: running totals, never added; rule 2: null / count-less usage is ignored
    chunks = [
        chunk("a", usage={"prompt_tokens": 11, "completion_tokens": 1}),
        chunk("b", usage=None),
        chunk("c", usage={"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}),
        chunk("d", usage={}),
        chunk("e", usage={"total_tokens": 99}),
        chunk(finish="stop", usage={"completion_tokens": 434, "prompt_tokens": 11, "total_tokens": 445}),
        chunk(usage={"prompt_tokens": None, "completion_tokens": None}),
    ]
    assert_stream(chunks, provider, E(11, 0, 0, 434, 0))


@pytest.mark.parametrize("provider", [None, "openai", "azure"])
def test_openai_stream_include_usage_with_a_prompt_filter_first_chunk(provider: str | None) -> None:
    # streaming rule 2: Azure's first chunk (choices [], prompt_filter_results, no usage) is ignored
    first = {"choices": [], "created": 0, "id": "", "model": "", "object": "", "prompt_filter_results": [{"x": 1}]}
    usage = {
        "completion_tokens": 78,
        "prompt_tokens": 15,
        "completion_tokens_details": {"reasoning_tokens": 64},
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    chunks = [first, chunk("a", usage=None), chunk(finish="stop", usage=None), usage_chunk(usage)]
    assert_stream(chunks, provider, E(15, 0, 0, 78, 64))


@pytest.mark.parametrize("provider", [None, "openai", "groq"])
def test_stream_without_usage_is_none(provider: str | None) -> None:
    # rule: a stream that carries no usage at all -> unknown (and the event is an estimate)
    chunks = [chunk("a"), chunk("b"), chunk(finish="stop")]
    assert_stream(chunks, provider, None)


@pytest.mark.parametrize("provider", [None, "openai"])
def test_stream_with_a_zero_usage_is_a_value(provider: str | None) -> None:
    # rule: an explicit zero is a value, not "no usage" (and no estimate is made)
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert_stream(
        [chunk("a", usage=None), chunk(finish="stop", usage=None), usage_chunk(zero)], provider, E(0, 0, 0, 0, 0)
    )


@pytest.mark.parametrize("provider", [None, "groq"])
def test_groq_x_groq_usage_repeated_then_an_error_event(provider: str | None) -> None:
    # streaming rules 1 and 3: x_groq.usage (and top-level usage) repeated; an error event changes nothing
    usage: dict[str, Any] = {"queue_time": 0.19, "prompt_tokens": 336, "completion_tokens": 96, "prompt_time": 0.01}
    usage["prompt_tokens_details"] = {"cached_tokens": 256}
    usage["completion_tokens_details"] = {"reasoning_tokens": 59}
    chunks = [
        chunk("a", x_groq={"id": "req_1"}),
        chunk(finish="stop", x_groq={"id": "req_1", "usage": usage}),
        {**usage_chunk(usage), "x_groq": {"id": "req_1", "usage": usage}},
        usage_chunk(usage, service_tier="on_demand"),
        {"event": "error", "data": {"error": {"message": "late failure", "type": "internal_server_error"}}},
    ]
    assert_stream(chunks, provider, E(336, 256, 0, 96, 59))


@pytest.mark.parametrize("provider", [None, "groq"])
def test_groq_stream_aborted_by_error_before_usage(provider: str | None) -> None:
    # rule: a stream that ends in an error event before any usage -> None
    error = {"event": "error", "data": {"error": {"message": "tool_use_failed", "type": "invalid_request_error"}}}
    assert_stream([chunk("a", x_groq={"id": "r"}), error], provider, None)


# --- xAI --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["xai", "x-ai", " XAI ", "grok"])
def test_xai_chat_reasoning_outside_completion_by_hint(provider: str) -> None:
    # rule: xAI chat completion_tokens exclude reasoning: output = completion + reasoning (no total needed)
    usage = {"completion_tokens_details": {"reasoning_tokens": 320}, "completion_tokens": 2, "prompt_tokens": 12}
    assert counts(extract_usage(chat(usage), provider)) == E(12, 0, 0, 322, 320)


@pytest.mark.parametrize("provider", [None, "xai", "openai"])
def test_xai_chat_ticks_are_usd_over_1e10(provider: str | None) -> None:
    # rule: xAI provider_cost = cost_in_usd_ticks / 10^10 exactly; the ticks mark xAI's reasoning semantics
    usage = {
        "prompt_tokens": 12,
        "completion_tokens": 20,
        "prompt_tokens_details": {"cached_tokens": 11},
        "completion_tokens_details": {"reasoning_tokens": 340},
        "cost_in_usd_ticks": 1721250,
    }
    assert counts(extract_usage(chat(usage), provider)) == E(12, 11, 0, 360, 340, cost="0.000172125")
    zero_cost = {**usage, "cost_in_usd_ticks": 0}
    assert counts(extract_usage(chat(zero_cost), provider)) == E(12, 11, 0, 360, 340, cost="0")
    huge = {**usage, "cost_in_usd_ticks": 12345678901234567890}
    assert counts(extract_usage(chat(huge), provider)) == E(12, 11, 0, 360, 340, cost="1234567890.123456789")


def test_xai_chat_stream_by_hint() -> None:
    # rule: xAI semantics in a stream (usage on the last, choice-less chunk)
    usage = {"prompt_tokens": 12, "completion_tokens": 2, "completion_tokens_details": {"reasoning_tokens": 340}}
    assert_stream([chunk("a"), chunk(finish="stop"), usage_chunk(usage)], "xai", E(12, 0, 0, 342, 340))


@pytest.mark.parametrize("provider", [None, "xai", "openai"])
def test_xai_responses_follow_openai_semantics_and_ticks_are_its_cost(provider: str | None) -> None:
    # rules: xAI Responses API = OpenAI Responses (output includes reasoning); xAI cost = ticks / 10^10
    response = {
        "id": "resp_1",
        "object": "response",
        "model": "grok-4",
        "output": [],
        "usage": {
            "input_tokens": 1941,
            "input_tokens_details": {"cached_tokens": 947},
            "output_tokens": 583,
            "output_tokens_details": {"reasoning_tokens": 380},
            "total_tokens": 2524,
            "num_sources_used": 0,
            "num_server_side_tools_used": 1,
            "cost_in_usd_ticks": 190420000,
        },
    }
    assert counts(extract_usage(response, provider)) == E(1941, 947, 0, 583, 380, cost="0.019042")
    events = [
        {"type": "response.created", "sequence_number": 0, "response": {**response, "usage": None}},
        {"type": "response.completed", "sequence_number": 1, "response": response},
    ]
    assert_stream(events, provider, E(1941, 947, 0, 583, 380, cost="0.019042"))


# --- Responses API ----------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", [None, "openai", "azure", "openrouter"])
def test_responses_non_stream_with_cache_write_and_null_details(provider: str | None) -> None:
    # rule: Responses input_tokens includes cached and cache writes; details are subsets; null details -> 0
    usage = {
        "total_tokens": 4025,
        "output_tokens_details": {"reasoning_tokens": 0},
        "output_tokens": 5,
        "input_tokens_details": {"cache_write_tokens": 4012, "cached_tokens": 0},
        "input_tokens": 4020,
    }
    response = {"output": [], "usage": usage, "status": "completed", "object": "response", "id": "r"}
    assert counts(extract_usage(response, provider)) == E(4020, 0, 4012, 5, 0)
    bare = {"input_tokens": 7, "output_tokens": 3, "input_tokens_details": None, "output_tokens_details": None}
    assert counts(extract_usage({**response, "usage": bare}, provider)) == E(7, 0, 0, 3, 0)
    assert extract_usage({**response, "usage": None, "status": "queued"}, provider) is None


@pytest.mark.parametrize("provider", [None, "openai", "azure-openai"])
def test_responses_stream_only_the_terminal_event_carries_usage(provider: str | None) -> None:
    # rule: response.created / in_progress carry usage null; response.completed carries the usage
    usage = {
        "input_tokens": 2143,
        "input_tokens_details": {"cached_tokens": 1280},
        "output_tokens": 919,
        "output_tokens_details": {"reasoning_tokens": 576},
        "total_tokens": 3062,
    }
    base = {"id": "r", "object": "response", "model": "gpt-5", "output": []}
    events = [
        {
            "type": "response.created",
            "sequence_number": 0,
            "response": {**base, "usage": None, "status": "in_progress"},
        },
        {"type": "response.in_progress", "sequence_number": 1, "response": {**base, "usage": None}},
        {
            "type": "response.output_text.delta",
            "sequence_number": 2,
            "delta": "usage",
            "item_id": "m",
            "output_index": 0,
        },
        {
            "type": "response.completed",
            "sequence_number": 3,
            "response": {**base, "usage": usage, "status": "completed"},
        },
    ]
    assert_stream(events, provider, E(2143, 1280, 0, 919, 576))


@pytest.mark.parametrize("provider", [None, "openai"])
def test_responses_incomplete_carries_usage_too(provider: str | None) -> None:
    # rule: the terminal event carries usage (response.incomplete ends a max_output_tokens run)
    base = {"id": "r", "object": "response", "model": "gpt-5", "output": []}
    usage = {"input_tokens": 50, "output_tokens": 16, "output_tokens_details": {"reasoning_tokens": 16}}
    events = [
        {"type": "response.created", "sequence_number": 0, "response": {**base, "usage": None}},
        {"type": "response.incomplete", "sequence_number": 1, "response": {**base, "usage": usage}},
    ]
    assert_stream(events, provider, E(50, 0, 0, 16, 16))


@pytest.mark.parametrize("provider", [None, "openai"])
def test_responses_all_zero_usage_is_a_value(provider: str | None) -> None:
    # rule: an explicit zero is a value
    usage = {
        "input_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 0,
    }
    assert counts(extract_usage({"object": "response", "output": [], "usage": usage}, provider)) == E(0, 0, 0, 0, 0)


# --- Anthropic Messages -----------------------------------------------------------------------------


@pytest.mark.parametrize("provider", [None, "anthropic", "bedrock", "vertex", "anthropic-compatible"])
def test_anthropic_input_excludes_reads_and_writes(provider: str | None) -> None:
    # rule: input = input_tokens + cache_read + cache_creation; write = cache_creation (1h part split out)
    usage = {
        "service_tier": "standard",
        "output_tokens": 503,
        "cache_creation": {"ephemeral_1h_input_tokens": 100, "ephemeral_5m_input_tokens": 148},
        "cache_read_input_tokens": 1800,
        "cache_creation_input_tokens": 248,
        "input_tokens": 2048,
        "server_tool_use": {"web_search_requests": 0},
    }
    message = {"usage": usage, "type": "message", "role": "assistant", "model": "claude-x", "content": []}
    assert counts(extract_usage(message, provider)) == E(4096, 1800, 248, 503, 0, 100)


@pytest.mark.parametrize("provider", [None, "anthropic"])
def test_anthropic_null_cache_fields_and_only_reads(provider: str | None) -> None:
    # rule: null cache fields are no cache activity; reads with input_tokens 0 still count as input
    nulls = {
        "input_tokens": 12,
        "output_tokens": 29,
        "cache_read_input_tokens": None,
        "cache_creation_input_tokens": None,
    }
    assert counts(extract_usage({"type": "message", "usage": nulls}, provider)) == E(12, 0, 0, 29, 0)
    reads = {"input_tokens": 0, "cache_read_input_tokens": 500, "cache_creation_input_tokens": 0, "output_tokens": 4}
    assert counts(extract_usage({"type": "message", "usage": reads}, provider)) == E(500, 500, 0, 4, 0)


@pytest.mark.parametrize("provider", [None, "anthropic"])
def test_anthropic_thinking_tokens_detail(provider: str | None) -> None:
    # rule: reasoning = output_tokens_details.thinking_tokens if present, else 0; output includes it
    usage = {"output_tokens_details": {"thinking_tokens": 139}, "output_tokens": 1699, "input_tokens": 51}
    assert counts(extract_usage({"type": "message", "usage": usage}, provider)) == E(51, 0, 0, 1699, 139)


def _start(usage: dict[str, Any]) -> dict[str, Any]:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [],
        "usage": usage,
    }
    return {"type": "message_start", "message": message}


def _delta(usage: dict[str, Any]) -> dict[str, Any]:
    return {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": usage}


TEXT = [
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    {"type": "content_block_stop", "index": 0},
]


@pytest.mark.parametrize("provider", [None, "anthropic", "anthropic-compatible"])
def test_anthropic_stream_delta_output_wins_over_the_placeholder(provider: str | None) -> None:
    # streaming rule 4: start's counts, then the delta's (cumulative) output; start's output is a placeholder
    start = _start(
        {"input_tokens": 11, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0, "output_tokens": 1}
    )
    chunks = [start, *TEXT, _delta({"output_tokens": 6}), {"type": "message_stop"}]
    assert_stream(chunks, provider, E(11, 0, 0, 6, 0))


@pytest.mark.parametrize("provider", [None, "anthropic"])
def test_anthropic_stream_delta_cache_and_input_win_when_present(provider: str | None) -> None:
    # streaming rule 4: delta values are cumulative and win, input and cache fields included
    start = _start(
        {"cache_read_input_tokens": 3000, "input_tokens": 6, "output_tokens": 2, "cache_creation_input_tokens": 0}
    )
    delta = _delta(
        {"output_tokens": 198, "cache_creation_input_tokens": 3337, "cache_read_input_tokens": 6289, "input_tokens": 6}
    )
    assert_stream([start, *TEXT, delta, {"type": "message_stop"}], provider, E(9632, 6289, 3337, 198, 0))


@pytest.mark.parametrize("provider", [None, "anthropic"])
def test_anthropic_stream_delta_nulls_keep_the_start_values(provider: str | None) -> None:
    # streaming rule 4: only fields PRESENT in message_delta.usage apply; null is not a report
    start = _start(
        {"input_tokens": 40, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20, "output_tokens": 1}
    )
    delta = _delta(
        {
            "input_tokens": None,
            "cache_read_input_tokens": None,
            "cache_creation_input_tokens": None,
            "output_tokens": 70,
        }
    )
    assert_stream([start, *TEXT, delta], provider, E(160, 100, 20, 70, 0))


@pytest.mark.parametrize("provider", [None, "anthropic"])
def test_anthropic_stream_error_event_after_the_delta_keeps_the_usage(provider: str | None) -> None:
    # error events leave the reported usage as it was
    start = _start({"input_tokens": 9, "output_tokens": 1})
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert_stream([start, *TEXT, _delta({"output_tokens": 15}), error], provider, E(9, 0, 0, 15, 0))


def test_anthropic_sdk_objects_whole_and_streamed() -> None:
    # rules for Anthropic, read from the SDK's own pydantic objects (nullable fields left None)
    usage = {
        "input_tokens": 5,
        "cache_creation_input_tokens": 300,
        "cache_read_input_tokens": 1000,
        "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
        "output_tokens": 40,
    }
    message = anthropic_construct(
        type_=Message, value={"type": "message", "model": "claude-x", "content": [], "usage": usage}
    )
    assert counts(extract_usage(message)) == E(1305, 1000, 300, 40, 0, 200)
    events = [_start({**usage, "output_tokens": 1}), *TEXT, _delta({"output_tokens": 40})]
    sdk = [anthropic_construct(type_=RawMessageStreamEvent, value=e) for e in events]
    acc = UsageAccumulator("anthropic")
    for event in sdk:
        acc.add(event)
    assert counts(acc.usage) == E(1305, 1000, 300, 40, 0, 200)
    out = Events()
    list(producer.track_stream(iter(sdk), provider="anthropic", org_id="o", publish=out, request=REQUEST))
    assert event_counts(out[0]) == E(1305, 1000, 300, 40, 0, 200)


# --- Gemini / Vertex --------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", [None, "gemini", "google", "vertex", "google-vertex"])
def test_gemini_prompt_includes_cache_output_is_candidates_plus_thoughts(provider: str | None) -> None:
    # rule: input = prompt + toolUsePrompt (cached inside prompt); output = candidates + thoughts
    response = {
        "usageMetadata": {
            "totalTokenCount": 1450,
            "thoughtsTokenCount": 300,
            "toolUsePromptTokenCount": 50,
            "candidatesTokenCount": 100,
            "cachedContentTokenCount": 600,
            "promptTokenCount": 1000,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1000}],
            "trafficType": "ON_DEMAND",
        },
        "modelVersion": "gemini-2.5-pro",
        "candidates": [{"content": {"role": "model", "parts": [{"text": "x"}]}, "finishReason": "STOP"}],
    }
    assert counts(extract_usage(response, provider)) == E(1050, 600, 0, 400, 300)


@pytest.mark.parametrize("provider", [None, "gemini"])
def test_gemini_thinking_only_no_candidates_count(provider: str | None) -> None:
    # rule: output = candidates + thoughts; a missing candidatesTokenCount (MAX_TOKENS while thinking) is 0
    response = {
        "candidates": [{"finishReason": "MAX_TOKENS"}],
        "usageMetadata": {"promptTokenCount": 9, "thoughtsTokenCount": 100},
    }
    assert counts(extract_usage(response, provider)) == E(9, 0, 0, 100, 100)


@pytest.mark.parametrize("provider", [None, "gemini", "vertex"])
def test_gemini_stream_cumulative_and_count_less_chunks(provider: str | None) -> None:
    # streaming rules 1 and 2: cumulative usageMetadata every chunk; trafficType-only metadata ignored
    def part(text: str, meta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        cand: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
        if finish:
            cand["finishReason"] = finish
        return {"candidates": [cand], "usageMetadata": meta, "modelVersion": "gemini-2.5-flash"}

    chunks = [
        part("a", {"promptTokenCount": 26, "totalTokenCount": 158, "thoughtsTokenCount": 132}),
        part("b", {"trafficType": "ON_DEMAND"}),
        part("c", {"promptTokenCount": 26, "candidatesTokenCount": 10, "thoughtsTokenCount": 132}),
        part("", {"candidatesTokenCount": 23, "promptTokenCount": 26, "thoughtsTokenCount": 132}, "STOP"),
        part("", {"trafficType": "ON_DEMAND"}),
    ]
    assert_stream(chunks, provider, E(26, 0, 0, 155, 132))


def test_gemini_sdk_objects_whole_and_streamed() -> None:
    # streaming rule 1 with google-genai's pydantic objects (snake_case usage_metadata): the last report wins
    genai = pytest.importorskip("google.genai.types")

    def response(meta: dict[str, Any], text: str = "x") -> Any:
        return genai.GenerateContentResponse.model_validate(
            {
                "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}}],
                "usageMetadata": meta,
                "modelVersion": "gemini-2.5-flash",
            }
        )

    whole = response(
        {"promptTokenCount": 100, "cachedContentTokenCount": 64, "candidatesTokenCount": 7, "thoughtsTokenCount": 5}
    )
    assert counts(extract_usage(whole)) == E(100, 64, 0, 12, 5)
    chunks = [
        response({"promptTokenCount": 9, "candidatesTokenCount": 1, "thoughtsTokenCount": 185}),
        response({"promptTokenCount": 9, "candidatesTokenCount": 5, "thoughtsTokenCount": 185}),
        response({"promptTokenCount": 9, "candidatesTokenCount": 23, "thoughtsTokenCount": 185}),
    ]
    for provider in (None, "gemini"):
        acc = UsageAccumulator(provider)
        for c in chunks:
            acc.add(c)
        assert counts(acc.usage) == E(9, 0, 0, 208, 185)
        out = Events()
        list(
            producer.track_stream(iter(chunks), provider=provider or "google", org_id="o", publish=out, request=REQUEST)
        )
        assert event_counts(out[0]) == E(9, 0, 0, 208, 185)


# --- Bedrock, DashScope native, Hunyuan native, Ollama native ---------------------------------------


@pytest.mark.parametrize("provider", [None, "bedrock", "aws-bedrock", "amazon-bedrock"])
def test_bedrock_count_twins_counted_once(provider: str | None) -> None:
    # rule: input = inputTokens + cacheRead + cacheWrite; each *Count twin counts once (either may appear)
    response: dict[str, Any] = {
        "usage": {"totalTokens": 1429, "outputTokens": 5, "inputTokens": 2, "cacheReadInputTokenCount": 100},
        "stopReason": "end_turn",
        "output": {"message": {"role": "assistant", "content": [{"text": "21"}]}},
        "metrics": {"latencyMs": 10},
    }
    response["usage"]["cacheWriteInputTokens"] = 1322
    response["usage"]["cacheWriteInputTokenCount"] = 1322
    assert counts(extract_usage(response, provider)) == E(1424, 100, 1322, 5, 0)


@pytest.mark.parametrize("provider", [None, "qwen", "dashscope"])
def test_dashscope_native_cached_and_reasoning(provider: str | None) -> None:
    # rule: DashScope native input_tokens (cached inside), output_tokens includes reasoning
    response = {
        "request_id": "r",
        "usage": {
            "total_tokens": 130,
            "prompt_tokens_details": {"cached_tokens": 64},
            "output_tokens_details": {"reasoning_tokens": 20},
            "output_tokens": 30,
            "input_tokens": 100,
        },
        "output": {"choices": [{"finish_reason": "stop", "message": {"role": "assistant", "content": "2"}}]},
    }
    assert counts(extract_usage(response, provider)) == E(100, 64, 0, 30, 20)


@pytest.mark.parametrize("provider", [None, "qwen"])
def test_dashscope_native_stream_cumulative_with_sse_event_names(provider: str | None) -> None:
    # streaming rule 1: every DashScope native event carries the running usage; its SSE says `event:result`
    def event(n: int, finish: str) -> dict[str, Any]:
        usage = {"input_tokens": 16, "output_tokens": n, "output_tokens_details": {"reasoning_tokens": min(n, 10)}}
        return {
            "output": {"choices": [{"finish_reason": finish, "message": {"content": "x"}}]},
            "usage": usage,
            "request_id": "r",
        }

    chunks = [event(1, "null"), event(30, "null"), event(53, "stop")]
    assert_stream(chunks, provider, E(16, 0, 0, 53, 10))
    lines: list[str] = []
    for i, c in enumerate(chunks, 1):
        lines += [f"id:{i}", "event:result", ":HTTP_STATUS/200", f"data:{json.dumps(c)}", ""]
    out = Events()
    list(producer.track_sse_lines(iter(lines), provider=provider or "dashscope", org_id="o", publish=out))
    assert event_counts(out[0]) == E(16, 0, 0, 53, 10)


@pytest.mark.parametrize("provider", [None, "hunyuan", "tencent"])
def test_hunyuan_native_pascal_case(provider: str | None) -> None:
    # rule: Hunyuan Usage.PromptTokens / CompletionTokens, in the Response wrapper and in every SSE event
    response = {
        "Response": {"RequestId": "r", "Usage": {"TotalTokens": 113, "CompletionTokens": 42, "PromptTokens": 71}}
    }
    assert counts(extract_usage(response, provider)) == E(71, 0, 0, 42, 0)

    def event(n: int, finish: str) -> dict[str, Any]:
        choice = {"FinishReason": finish, "Delta": {"Role": "assistant", "Content": "x"}}
        return {
            "Usage": {"PromptTokens": 36, "CompletionTokens": n, "TotalTokens": 36 + n},
            "Choices": [choice],
            "Id": "i",
        }

    assert_stream([event(1, ""), event(20, ""), event(21, "stop")], provider, E(36, 0, 0, 21, 0))


@pytest.mark.parametrize("provider", [None, "ollama"])
def test_ollama_native_counts_on_the_done_object(provider: str | None) -> None:
    # rule: input = prompt_eval_count, output = eval_count, on the done:true object (NDJSON stream)
    def line(text: str, **extra: Any) -> dict[str, Any]:
        return {"model": "llama3.2", "message": {"role": "assistant", "content": text}, "done": False, **extra}

    final = line("", done=True, done_reason="stop", total_duration=4883583458, eval_count=282, prompt_eval_count=26)
    assert counts(extract_usage(final, provider)) == E(26, 0, 0, 282, 0)
    chunks = [line("The"), line(" sky"), final]
    acc = UsageAccumulator(provider)
    for c in chunks:
        acc.add(c)
    assert counts(acc.usage) == E(26, 0, 0, 282, 0)
    out = Events()
    list(producer.track_stream(iter(chunks), provider="ollama", org_id="o", publish=out, request=REQUEST))
    assert event_counts(out[0]) == E(26, 0, 0, 282, 0)


@pytest.mark.parametrize("provider", [None, "ollama"])
def test_ollama_native_omitted_counts(provider: str | None) -> None:
    # rule: Ollama omits zero counts (omitempty): a cached prompt has no prompt_eval_count,
    # an empty answer no eval_count
    def line(text: str, **extra: Any) -> dict[str, Any]:
        return {"model": "llama3.2", "message": {"role": "assistant", "content": text}, "done": False, **extra}

    cached_prompt = line("", done=True, eval_count=12)
    assert counts(extract_usage(cached_prompt, provider)) == E(0, 0, 0, 12, 0)
    empty_answer = line("", done=True, prompt_eval_count=26)
    assert counts(extract_usage(empty_answer, provider)) == E(26, 0, 0, 0, 0)
    for final, expected in ((cached_prompt, E(0, 0, 0, 12, 0)), (empty_answer, E(26, 0, 0, 0, 0))):
        out = Events()
        list(producer.track_stream(iter([line("a"), line("b"), final]), provider="ollama", org_id="o", publish=out))
        assert event_counts(out[0]) == expected


class _OllamaLike(BaseModel):
    """A pydantic response object in the style of the ollama Python library (counts as attributes)."""

    model: str
    done: bool
    message: dict[str, Any]
    prompt_eval_count: int | None = None
    eval_count: int | None = None


def test_ollama_pydantic_objects_through_the_stream_wrapper() -> None:
    # rule: Ollama native counts on the done object, here as attributes of SDK objects
    chunks = [
        _OllamaLike(model="llama3.2", done=False, message={"role": "assistant", "content": "a"}),
        _OllamaLike(model="llama3.2", done=False, message={"role": "assistant", "content": "b"}),
        _OllamaLike(
            model="llama3.2",
            done=True,
            message={"role": "assistant", "content": ""},
            prompt_eval_count=26,
            eval_count=2,
        ),
    ]
    assert counts(extract_usage(chunks)) == E(26, 0, 0, 2, 0)
    out = Events()
    list(producer.track_stream(iter(chunks), provider="ollama", org_id="o", publish=out, request=REQUEST))
    assert event_counts(out[0]) == E(26, 0, 0, 2, 0)


class _MistralUsage(BaseModel):
    model_config = ConfigDict(extra="allow")
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class _MistralResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    model: str
    usage: _MistralUsage
    choices: list[dict[str, Any]]


def test_other_sdks_pydantic_models_with_extras() -> None:
    # rule: OpenAI-compatible chat mapping, read from any pydantic model (declared fields and extras)
    usage = _MistralUsage(
        prompt_tokens=268, completion_tokens=5, total_tokens=273, prompt_tokens_details={"cached_tokens": 224}
    )
    response = _MistralResponse(id="x", model="mistral-large", usage=usage, choices=[])
    assert counts(extract_usage(response, "mistral")) == E(268, 224, 0, 5, 0)


def test_mistralai_stream_events_are_unwrapped() -> None:
    # rule: usage on the finish chunk (Mistral), read through the mistralai SDK's stream events, which wrap
    # each chunk as CompletionEvent(data=CompletionChunk): the wrapper alone carries no usage and no text
    models = pytest.importorskip("mistralai.models")
    raw = [  # the corpus's mistral/chat_stream_usage_on_finish_chunk.json, its middle chunks left out
        {"role": "assistant", "content": ""},
        {"content": "Okay, the answer is 4."},
    ]
    chunks = [
        {
            "id": "9f9d",
            "object": "chat.completion.chunk",
            "created": 1764296393,
            "model": "magistral-medium-latest",
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
        }
        for delta in raw
    ]
    chunks.append(
        {
            "id": "9f9d",
            "object": "chat.completion.chunk",
            "created": 1764296393,
            "model": "magistral-medium-latest",
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "total_tokens": 242, "completion_tokens": 232},
        }
    )
    events = [models.CompletionEvent(data=models.CompletionChunk.model_validate(c)) for c in chunks]
    out = Events()
    seen = list(producer.track_stream(iter(events), provider="mistral", org_id="o", publish=out, request=REQUEST))
    assert seen == events  # the app gets the SDK's own objects
    assert event_counts(out[0]) == E(10, 0, 0, 232, 0)
    assert (out[0].model, out[0].estimated, out[0].status) == ("magistral-medium-latest", False, "ok")
    # without the usage (a cut stream), the estimate counts the text inside the wrappers
    cut = Events()
    list(producer.track_stream(iter(events[:2]), provider="mistral", org_id="o", publish=cut, request=REQUEST))
    assert cut[0].estimated and cut[0].usage.output_tokens > 0


# --- SDK objects of the OpenAI library --------------------------------------------------------------


def test_openai_sdk_objects_with_extra_usage_fields() -> None:
    # rules: chat cache_write_tokens (newer field) and DeepSeek's hit count sit in the SDK models' extras
    usage = {
        "prompt_tokens": 4020,
        "completion_tokens": 4,
        "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 4012},
        "cost": 0.01355025,
    }
    obj = openai_construct(type_=ChatCompletion, value=chat(usage))
    assert counts(extract_usage(obj, "openrouter")) == E(4020, 0, 4012, 4, 0, cost="0.01355025")
    ds = openai_construct(
        type_=ChatCompletion,
        value=chat({"prompt_tokens": 976, "completion_tokens": 61, "prompt_cache_hit_tokens": 896}),
    )
    assert counts(extract_usage(ds, "deepseek")) == E(976, 896, 0, 61, 0)
    responses = openai_construct(
        type_=Response,
        value={
            "id": "r",
            "object": "response",
            "output": [],
            "model": "gpt-5",
            "usage": {
                "input_tokens": 10,
                "output_tokens": 2,
                "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 6},
                "output_tokens_details": {"reasoning_tokens": 1},
            },
        },
    )
    assert counts(extract_usage(responses)) == E(10, 4, 6, 2, 1)


def test_openai_sdk_chunks_through_the_stream_wrapper() -> None:
    # streaming rules through SDK chunk objects: x_groq.usage, choices[0].usage, top-level usage
    usage = {"prompt_tokens": 21, "completion_tokens": 9, "prompt_tokens_details": {"cached_tokens": 5}}
    moonshot_final = chunk(finish="stop")
    moonshot_final["choices"][0]["usage"] = usage
    streams = {
        "groq": [chunk("a", x_groq={"id": "r"}), chunk(finish="stop", x_groq={"id": "r", "usage": usage})],
        "moonshot": [chunk("a"), moonshot_final],
        "openai": [chunk("a", usage=None), chunk(finish="stop", usage=None), usage_chunk(usage)],
    }
    for provider, raw in streams.items():
        objects = [openai_construct(type_=ChatCompletionChunk, value=c) for c in raw]
        out = Events()
        list(producer.track_stream(iter(objects), provider=provider, org_id="o", publish=out, request=REQUEST))
        assert event_counts(out[0]) == E(21, 5, 0, 9, 0), provider


def test_openai_sdk_responses_events_xai_ticks() -> None:
    # rule: xAI cost = ticks / 10^10, also on the Responses API read from SDK events (ticks in extras)
    usage = {"input_tokens": 100, "output_tokens": 10, "cost_in_usd_ticks": 5000000}
    events = [
        {
            "type": "response.created",
            "sequence_number": 0,
            "response": {"id": "r", "object": "response", "output": [], "model": "grok-4", "usage": None},
        },
        {
            "type": "response.completed",
            "sequence_number": 1,
            "response": {"id": "r", "object": "response", "output": [], "model": "grok-4", "usage": usage},
        },
    ]
    objects = [openai_construct(type_=ResponseStreamEvent, value=e) for e in events]
    acc = UsageAccumulator("xai")
    for obj in objects:
        acc.add(obj)
    assert counts(acc.usage) == E(100, 0, 0, 10, 0, cost="0.0005")


# --- service tiers ----------------------------------------------------------------------------------


def test_service_tier_as_reported_wherever_the_provider_puts_it() -> None:
    # service tiers: OpenAI/Groq top-level, Responses response.service_tier, Anthropic usage.service_tier,
    # Bedrock serviceTier {"type": ...}; the last report of a stream wins
    assert extract_service_tier(chat({"prompt_tokens": 1, "completion_tokens": 1}, service_tier="flex")) == "flex"
    start = _start({"input_tokens": 3, "output_tokens": 1, "service_tier": "priority"})
    assert extract_service_tier([start, _delta({"output_tokens": 2})]) == "priority"
    created = {"type": "response.created", "response": {"id": "r", "service_tier": "auto", "usage": None}}
    done = {
        "type": "response.completed",
        "response": {"id": "r", "service_tier": "flex", "usage": {"input_tokens": 1, "output_tokens": 1}},
    }
    assert extract_service_tier([created, done]) == "flex"
    converse = {"output": {}, "usage": {"inputTokens": 1, "outputTokens": 1}, "serviceTier": {"type": "priority"}}
    assert extract_service_tier(converse) == "priority"


def test_event_service_tier_default_names_are_null() -> None:
    # DESIGN: default / standard / auto mean null in the event; batch / flex / priority are kept
    for tier, want in (("default", None), ("standard", None), ("auto", None), ("flex", "flex"), ("batch", "batch")):
        out = Events()
        producer.track_response(
            chat({"prompt_tokens": 1, "completion_tokens": 1}, service_tier=tier),
            provider="openai",
            org_id="o",
            publish=out,
        )
        assert out[0].service_tier == want


# --- the estimated fallback -------------------------------------------------------------------------


def _vertex(text: str) -> dict[str, Any]:
    part = {"content": {"role": "model", "parts": [{"text": text}]}}
    return {"candidates": [part], "usageMetadata": {"trafficType": "ON_DEMAND"}, "modelVersion": "gemini-2.5-pro"}


NATIVE_STREAMS_WITHOUT_USAGE: dict[str, list[dict[str, Any]]] = {
    # Vertex: count-less usageMetadata until the final chunk, which never came
    "vertex": [_vertex("The sky "), _vertex("is blue.")],
    # Ollama native: no done:true object (aborted)
    "ollama": [
        {"model": "llama3.2", "message": {"role": "assistant", "content": "The sky "}, "done": False},
        {"model": "llama3.2", "message": {"role": "assistant", "content": "is blue."}, "done": False},
    ],
    # Ollama /api/generate
    "ollama-generate": [
        {"model": "llama3.2", "response": "The sky ", "done": False},
        {"model": "llama3.2", "response": "is blue.", "done": False},
    ],
    # Bedrock ConverseStream: no metadata event
    "bedrock": [
        {"messageStart": {"role": "assistant"}},
        {"contentBlockDelta": {"delta": {"text": "The sky "}, "contentBlockIndex": 0}},
        {"contentBlockDelta": {"delta": {"text": "is blue."}, "contentBlockIndex": 0}},
    ],
}


@pytest.mark.parametrize("name", list(NATIVE_STREAMS_WITHOUT_USAGE))
def test_estimate_counts_the_text_of_native_streams(name: str) -> None:
    # DESIGN: only when the provider reports nothing is usage counted (estimated: true), output from the text
    chunks = NATIVE_STREAMS_WITHOUT_USAGE[name]
    assert extract_usage(chunks) is None
    out = Events()
    request = {"model": "m", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}
    list(
        producer.track_stream(
            iter(chunks), provider=name.split("-", maxsplit=1)[0], org_id="o", publish=out, request=request
        )
    )
    [event] = out
    assert event.estimated
    assert event.usage.input_tokens == producer.count_prompt(request, "m")
    assert event.usage.output_tokens == producer.count_text("The sky is blue.", "m") > 0
