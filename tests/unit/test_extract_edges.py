"""Usage extraction on cases the provider corpus lacks, on stream edge cases, and on garbage input."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from anthropic._models import construct_type as anthropic_construct
from anthropic.types import RawMessageStreamEvent
from hypothesis import given, settings
from hypothesis import strategies as st
from openai._models import construct_type as openai_construct
from openai.types.chat import ChatCompletionChunk
from openai.types.responses import ResponseStreamEvent

from producer import Usage, UsageAccumulator, extract_model, extract_service_tier, extract_usage
from producer.extract import PROVIDERS, canonical_provider


def counts(usage: Usage | None) -> tuple[int, ...] | None:
    """(input, cached, cache_write, output, reasoning, cache_write_1h), or None."""
    if usage is None:
        return None
    return (
        usage.input_tokens,
        usage.cached_input_tokens,
        usage.cache_write_tokens,
        usage.output_tokens,
        usage.reasoning_tokens,
        usage.cache_write_1h_tokens,
    )


def stream(chunks: list[Any], provider: str | None = None) -> UsageAccumulator:
    acc = UsageAccumulator(provider)
    for chunk in chunks:
        acc.add(chunk)
    return acc


def chat_chunk(
    content: str | None = None, *, usage: Any = None, finish: str | None = None, **extra: Any
) -> dict[str, Any]:
    delta = {} if content is None else {"content": content}
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1760000000,
        "model": extra.pop("model", "m-1"),
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **({"usage": usage} if usage is not ... else {}),
        **extra,
    }


BOTH = pytest.mark.parametrize("provider", [None, "unknown-gateway"])
"""With no hint and with a hint we do not know, the shape decides."""


# --- providers the corpus has no payload for -------------------------------------------------------


@pytest.mark.parametrize("provider", [None, "moonshot", "kimi"])
def test_moonshot_top_level_cached_tokens(provider: str | None) -> None:
    response = {
        "id": "cmpl-1",
        "object": "chat.completion",
        "model": "kimi-k2-0905-preview",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1200, "completion_tokens": 30, "total_tokens": 1230, "cached_tokens": 1024},
    }
    assert counts(extract_usage(response, provider)) == (1200, 1024, 0, 30, 0, 0)


@pytest.mark.parametrize("provider", [None, "moonshot"])
def test_moonshot_stream_cached_tokens_inside_the_finishing_choice(provider: str | None) -> None:
    usage = {"prompt_tokens": 1200, "completion_tokens": 2, "total_tokens": 1202, "cached_tokens": 1024}
    chunks = [
        chat_chunk("Hel", usage=...),
        chat_chunk("lo", usage=...),
        {**chat_chunk(usage=...), "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "usage": usage}]},
    ]
    assert counts(stream(chunks, provider).usage) == (1200, 1024, 0, 2, 0, 0)


@pytest.mark.parametrize("provider", [None, "hunyuan", "tencent-hunyuan"])
def test_hunyuan_openai_compatible_mode(provider: str | None) -> None:
    usage = {"prompt_tokens": 36, "completion_tokens": 21, "total_tokens": 57}
    response = {
        "id": "x",
        "object": "chat.completion",
        "model": "hunyuan-turbos-latest",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": usage,
    }
    assert counts(extract_usage(response, provider)) == (36, 0, 0, 21, 0, 0)
    # Compatible-mode streams report cumulative usage in every chunk: the last one wins.
    chunks = [chat_chunk("a", usage={**usage, "completion_tokens": n}, model="hunyuan-turbos-latest") for n in (1, 2)]
    chunks.append(chat_chunk(usage=usage, finish="stop", model="hunyuan-turbos-latest"))
    acc = stream(chunks, provider)
    assert counts(acc.usage) == (36, 0, 0, 21, 0, 0)
    assert acc.model == "hunyuan-turbos-latest"


@pytest.mark.parametrize("provider", [None, "hunyuan"])
def test_hunyuan_native_response_wrapper(provider: str | None) -> None:
    response = {
        "Response": {"Usage": {"PromptTokens": 71, "CompletionTokens": 42, "TotalTokens": 113}, "RequestId": "r"}
    }
    assert counts(extract_usage(response, provider)) == (71, 0, 0, 42, 0, 0)


@pytest.mark.parametrize("provider", [None, "vllm"])
def test_vllm_stream_include_usage(provider: str | None) -> None:
    chunks = [chat_chunk("The", usage=None), chat_chunk(" end", usage=None), chat_chunk(usage=None, finish="length")]
    chunks.append({**chat_chunk(usage=None), "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 16}})
    assert counts(stream(chunks, provider).usage) == (4, 0, 0, 16, 0, 0)


@pytest.mark.parametrize("provider", [None, "vllm"])
def test_vllm_stream_continuous_usage_stats(provider: str | None) -> None:
    # continuous_usage_stats: every chunk carries the running totals; adding them up would give 4*3 in.
    chunks = [
        chat_chunk(word, usage={"prompt_tokens": 4, "completion_tokens": n, "total_tokens": 4 + n})
        for n, word in enumerate(["a", "b", "c"], start=1)
    ]
    chunks.append({**chat_chunk(usage=None), "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}})
    assert counts(stream(chunks, provider).usage) == (4, 0, 0, 3, 0, 0)


@pytest.mark.parametrize("provider", [None, "bedrock", "aws-bedrock"])
def test_bedrock_converse_stream_metadata_event(provider: str | None) -> None:
    events = [
        {"messageStart": {"role": "assistant"}},
        {"contentBlockDelta": {"delta": {"text": "Hi"}, "contentBlockIndex": 0}},
        {"contentBlockStop": {"contentBlockIndex": 0}},
        {"messageStop": {"stopReason": "end_turn"}},
        {
            "metadata": {
                "usage": {
                    "inputTokens": 2,
                    "outputTokens": 5,
                    "totalTokens": 1329,
                    "cacheReadInputTokens": 0,
                    "cacheReadInputTokenCount": 0,
                    "cacheWriteInputTokens": 1322,
                    "cacheWriteInputTokenCount": 1322,
                    # the TTL split, when Bedrock reports it (sorted 1h before 5m)
                    "cacheDetails": [{"ttl": "1h", "inputTokens": 1000}, {"ttl": "5m", "inputTokens": 322}],
                },
                "metrics": {"latencyMs": 1990},
                "serviceTier": {"type": "flex"},
            }
        },
    ]
    acc = stream(events, provider)
    assert counts(acc.usage) == (1324, 0, 1322, 5, 0, 1000)
    assert acc.service_tier == "flex"


def test_vertex_traffic_type_only_chunks_are_no_usage() -> None:
    chunk = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "x"}]}}],
        "usageMetadata": {"trafficType": "ON_DEMAND"},
        "modelVersion": "gemini-2.5-pro",
    }
    acc = stream([chunk, chunk], "vertex")
    assert acc.usage is None
    assert acc.model == "gemini-2.5-pro"
    final = {**chunk, "usageMetadata": {"promptTokenCount": 26, "candidatesTokenCount": 23, "trafficType": "ON_DEMAND"}}
    acc.add(final)
    acc.add(chunk)  # a later count-less report does not erase the counts
    assert counts(acc.usage) == (26, 0, 0, 23, 0, 0)


# --- stream rules ---------------------------------------------------------------------------------


@BOTH
def test_usage_repeated_in_every_chunk_is_taken_once(provider: str | None) -> None:
    usage = {"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24}
    chunks = [chat_chunk("x", usage=usage) for _ in range(5)]
    assert counts(stream(chunks, provider).usage) == (20, 0, 0, 4, 0, 0)


def test_all_zero_usage_is_a_value_not_none() -> None:
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert counts(extract_usage({"choices": [], "usage": zero})) == (0, 0, 0, 0, 0, 0)
    assert counts(stream([chat_chunk(usage=None), chat_chunk(usage=zero)]).usage) == (0, 0, 0, 0, 0, 0)
    gemini = {"candidates": [], "usageMetadata": {"promptTokenCount": 0, "candidatesTokenCount": 0}}
    assert counts(extract_usage(gemini)) == (0, 0, 0, 0, 0, 0)


@BOTH
def test_stream_ended_by_an_error_event(provider: str | None) -> None:
    chunks = [chat_chunk("a", x_groq={"id": "req_1"}), chat_chunk("b")]
    error = {"event": "error", "data": {"error": {"message": "tool_use_failed", "type": "invalid_request_error"}}}
    assert stream([*chunks, error], provider).usage is None
    # An error after the usage was reported keeps the usage.
    usage = {"prompt_tokens": 9, "completion_tokens": 2}
    assert counts(stream([*chunks, chat_chunk(usage=usage), error], provider).usage) == (9, 0, 0, 2, 0, 0)


def test_anthropic_stream_ended_by_an_error_event_keeps_the_start_counts() -> None:
    events = [
        {"type": "message_start", "message": {"model": "claude-x", "usage": {"input_tokens": 40, "output_tokens": 1}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    ]
    # What the provider reported before failing: message_start's counts (output a placeholder).
    assert counts(stream(events).usage) == (40, 0, 0, 1, 0, 0)


def test_responses_stream_failed_without_usage() -> None:
    events = [
        {"type": "response.created", "response": {"model": "gpt-5", "service_tier": "auto", "usage": None}},
        {"type": "response.failed", "response": {"model": "gpt-5", "status": "failed", "usage": None}},
    ]
    assert stream(events, "openai").usage is None
    incomplete = {
        "type": "response.incomplete",
        "response": {"model": "gpt-5", "service_tier": "flex", "usage": {"input_tokens": 50, "output_tokens": 7}},
    }
    acc = stream([*events, incomplete], "openai")
    assert counts(acc.usage) == (50, 0, 0, 7, 0, 0)
    assert acc.service_tier == "flex"


def test_anthropic_message_delta_wins_field_by_field_and_keeps_the_ttl_split() -> None:
    start = {
        "type": "message_start",
        "message": {
            "model": "claude-sonnet-4-5",
            "usage": {
                "input_tokens": 5,
                "cache_creation_input_tokens": 300,
                "cache_read_input_tokens": 0,
                "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
                "output_tokens": 1,
                "service_tier": "priority",
            },
        },
    }
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 77}}
    events = [start, delta]
    for acc in (stream(events), stream(events, "anthropic")):
        assert counts(acc.usage) == (305, 0, 300, 77, 0, 200)
        assert acc.model == "claude-sonnet-4-5"
        assert acc.service_tier == "priority"
    sdk = [anthropic_construct(type_=RawMessageStreamEvent, value=e) for e in events]
    assert counts(stream(sdk).usage) == (305, 0, 300, 77, 0, 200)
    # A message_delta without message_start (joined late) still counts what it reports.
    assert counts(stream([delta]).usage) == (0, 0, 0, 77, 0, 0)


def test_anthropic_thinking_tokens_and_cache_creation_without_total() -> None:
    usage = {
        "input_tokens": 10,
        "cache_creation": {"ephemeral_5m_input_tokens": 7, "ephemeral_1h_input_tokens": 3},
        "output_tokens": 50,
        "output_tokens_details": {"thinking_tokens": 20},
    }
    assert counts(extract_usage({"type": "message", "usage": usage}, "anthropic")) == (20, 0, 10, 50, 20, 3)


def test_sdk_chunks_with_usage_in_extras() -> None:
    # openai's ChatCompletionChunk does not declare x_groq: it lands in the model's extras.
    chunks = [
        chat_chunk("a", usage=None, x_groq={"id": "req_1"}, obfuscation="abc"),
        chat_chunk(
            usage=None, finish="stop", x_groq={"id": "req_1", "usage": {"prompt_tokens": 21, "completion_tokens": 9}}
        ),
    ]
    objects = [openai_construct(type_=ChatCompletionChunk, value=c) for c in chunks]
    assert objects[1].__pydantic_extra__ and "x_groq" in objects[1].__pydantic_extra__
    for provider in (None, "groq"):
        assert counts(stream(objects, provider).usage) == (21, 0, 0, 9, 0, 0)


def test_responses_stream_events_as_sdk_objects() -> None:
    events = [
        {"type": "response.created", "sequence_number": 0, "response": {"id": "r", "model": "gpt-5", "usage": None}},
        {
            "type": "response.completed",
            "sequence_number": 1,
            "response": {
                "id": "r",
                "model": "gpt-5-2025-08-07",
                "service_tier": "priority",
                "usage": {
                    "input_tokens": 100,
                    "input_tokens_details": {"cached_tokens": 64},
                    "output_tokens": 30,
                    "output_tokens_details": {"reasoning_tokens": 12},
                    "total_tokens": 130,
                },
            },
        },
    ]
    acc = stream([openai_construct(type_=ResponseStreamEvent, value=e) for e in events])
    assert counts(acc.usage) == (100, 64, 0, 30, 12, 0)
    assert (acc.model, acc.service_tier) == ("gpt-5-2025-08-07", "priority")


# --- costs ----------------------------------------------------------------------------------------


def test_xai_ticks_are_exact_decimal_usd() -> None:
    usage = {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14, "cost_in_usd_ticks": 1641500}
    result = extract_usage({"choices": [], "usage": usage})
    assert result is not None
    assert result.provider_cost == Decimal("0.00016415")
    assert isinstance(result.provider_cost, Decimal)


@pytest.mark.parametrize(
    ("cost", "expected"),
    [
        (0.1, Decimal("0.1")),  # the JSON text, not 0.1000000000000000055...
        (0.0004970133333333333, Decimal("0.0004970133333333333")),
        (4.25e-06, Decimal("0.00000425")),
        ("0.00219855", Decimal("0.00219855")),
        (3, Decimal(3)),
        (None, None),
        (True, None),
        ("n/a", None),
        (float("nan"), None),
    ],
)
def test_provider_cost_as_decimal(cost: Any, expected: Decimal | None) -> None:
    result = extract_usage({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1, "cost": cost}})
    assert result is not None
    assert result.provider_cost == expected


def test_xai_reasoning_added_only_under_xai_semantics() -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 5, "completion_tokens_details": {"reasoning_tokens": 40}}
    # No marker and the total is absent: OpenAI semantics, unless the hint says xAI.
    assert counts(extract_usage({"choices": [], "usage": usage})) == (10, 0, 0, 5, 40, 0)
    assert counts(extract_usage({"choices": [], "usage": usage}, "xai")) == (10, 0, 0, 45, 40, 0)
    # The recorded total adds up only with reasoning on top: xAI by shape.
    with_total = {**usage, "total_tokens": 55}
    assert counts(extract_usage({"choices": [], "usage": with_total})) == (10, 0, 0, 45, 40, 0)


# --- no usage and garbage -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        None,
        'data: {"usage": {"prompt_tokens": 1}}',
        b"{}",
        42,
        3.5,
        True,
        [],
        [1, "x", None, 2.0],
        [[{"usage": {"prompt_tokens": 1, "completion_tokens": 1}}]],
        {},
        {"usage": None},
        {"usage": {}},
        {"usage": "12 tokens"},
        {"usage": []},
        {"usage": {"prompt_tokens": "12", "completion_tokens": "3"}},
        {"usage": {"prompt_tokens": True, "completion_tokens": False}},
        {"usage": {"total_tokens": 30}},
        {"choices": "nope"},
        {"choices": [None]},
        {"choices": [{"usage": 5}]},
        {"type": "message_start", "message": "x"},
        {"type": "message_delta", "usage": None},
        {"response": "text of ollama /api/generate", "done": False},
        {"usageMetadata": None, "candidates": None},
        {"Response": {"Error": {"Code": "AuthFailure"}}},
        {"metadata": {"user": "x"}},
        {"done": True},
        object(),
    ],
)
@pytest.mark.parametrize("provider", [None, "xai", "anthropic", "gemini"])
def test_no_usage_is_none(payload: Any, provider: str | None) -> None:
    assert extract_usage(payload, provider) is None
    acc = UsageAccumulator(provider)
    acc.add(payload)
    assert acc.usage is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "usage",
                    "x_groq",
                    "choices",
                    "message",
                    "response",
                    "type",
                    "usageMetadata",
                    "Usage",
                    "Response",
                    "metadata",
                    "eval_count",
                    "prompt_eval_count",
                    "done",
                    "prompt_tokens",
                    "completion_tokens",
                    "input_tokens",
                    "output_tokens",
                    "cache_creation",
                    "cache_read_input_tokens",
                    "prompt_tokens_details",
                    "cached_tokens",
                    "cost",
                    "cost_in_usd_ticks",
                    "cacheDetails",
                    "model",
                    "service_tier",
                ]
            )
            | st.text(max_size=6),
            inner,
            max_size=5,
        )
    ),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(JSON, max_size=4), provider=st.sampled_from([None, "openai", "anthropic", "xai", "bedrock"]))
def test_never_raises_on_arbitrary_json(chunks: list[Any], provider: str | None) -> None:
    acc = UsageAccumulator(provider)
    for chunk in chunks:
        acc.add(chunk)
    assert acc.usage is None or isinstance(acc.usage, Usage)
    assert acc.model is None or isinstance(acc.model, str)
    assert acc.service_tier is None or isinstance(acc.service_tier, str)


# --- hints, model and tier ------------------------------------------------------------------------


def test_provider_names() -> None:
    assert {"openai", "azure", "anthropic", "gemini", "vertex", "bedrock", "xai", "ollama"} <= set(PROVIDERS)
    assert canonical_provider(" Azure-OpenAI ") == "azure"
    assert canonical_provider("x-ai") == "xai"
    assert canonical_provider("llama.cpp") == "llamacpp"
    assert canonical_provider("openai") == "openai"
    assert canonical_provider("someone-else") is None
    assert canonical_provider(None) is None
    assert UsageAccumulator("DashScope").provider == "qwen"
    assert UsageAccumulator("someone-else").provider is None  # shape detection


@pytest.mark.parametrize("provider", ["gemini", "vertex", "anthropic", "bedrock", "ollama", "not-a-provider"])
def test_a_hint_never_hides_an_openai_compatible_endpoints_usage(provider: str) -> None:
    # Gemini, Anthropic, Bedrock, Vertex and Ollama all serve OpenAI-compatible endpoints too.
    chat = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
    assert counts(extract_usage(chat, provider)) == (3, 0, 0, 4, 0, 0)


def test_model_and_tier_helpers() -> None:
    assert extract_model({"modelVersion": "gemini-2.5-flash", "candidates": []}) == "gemini-2.5-flash"
    assert extract_model({"model": ""}) is None
    assert extract_model({"model": 5}) is None
    assert extract_service_tier({"service_tier": "batch", "choices": []}) == "batch"
    converse = {"output": {}, "stopReason": "end_turn", "usage": {"inputTokens": 1}, "serviceTier": {"type": "flex"}}
    assert extract_service_tier(converse) == "flex"
    assert extract_service_tier("garbage") is None
