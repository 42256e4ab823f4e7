"""Usage extraction against the 80 real provider payloads of ../shared/provider-corpus (dicts and SDK objects)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from anthropic._models import construct_type as anthropic_construct
from anthropic.types import Message, RawMessageStreamEvent
from openai._models import construct_type as openai_construct  # how the SDK builds objects from response JSON
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel, ValidationError

from producer import Usage, UsageAccumulator, extract_model, extract_service_tier, extract_usage
from producer.extract import canonical_provider
from tests.conftest import CORPUS

FIELDS = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")
#: corpus provider names that are no provider of ours: extraction must recognize them by shape
UNKNOWN_PROVIDERS = {"anthropic-compatible", "llm-d-inference-sim"}


def _files() -> list[Path]:
    return sorted(CORPUS.rglob("*.json")) if CORPUS.is_dir() else []


FILES = _files()


@pytest.fixture(autouse=True)
def _corpus_present() -> None:
    if not FILES:
        message = f"provider corpus not found at {CORPUS}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


def _params(predicate: Callable[[dict[str, Any]], bool]) -> list[Any]:
    cases = []
    for path in FILES:
        case = json.loads(path.read_text())
        if predicate(case):
            cases.append(pytest.param(case, id=str(path.relative_to(CORPUS))))
    # A parameter list that is empty because the corpus is missing still yields one (skipped) test.
    return cases or [pytest.param(None, id="corpus-missing")]


def _check(usage: Usage | None, case: dict[str, Any]) -> None:
    expected = case["expected"]
    if expected["input_tokens"] is None:
        assert usage is None, "no usage reported must be None, never zeros"
        return
    assert usage is not None
    assert {f: getattr(usage, f) for f in FIELDS} == {f: expected[f] for f in FIELDS}
    want_cost = None if expected["provider_cost"] is None else Decimal(str(expected["provider_cost"]))
    assert usage.provider_cost == want_cost
    assert usage.provider_cost is None or isinstance(usage.provider_cost, Decimal)
    extra = case.get("expected_extra", {})
    if "cache_write_1h_tokens" in extra:
        assert usage.cache_write_1h_tokens == extra["cache_write_1h_tokens"]
    else:
        assert usage.cache_write_1h_tokens == 0


HINTS = [pytest.param(True, id="hint"), pytest.param(False, id="shape")]


def _hint(case: dict[str, Any], use_hint: bool) -> str | None:
    return case["provider"] if use_hint else None


@pytest.mark.parametrize("use_hint", HINTS)
@pytest.mark.parametrize("case", _params(lambda c: not c["streaming"]))
def test_whole_response(case: dict[str, Any], use_hint: bool) -> None:
    _check(extract_usage(case["payload"], _hint(case, use_hint)), case)


@pytest.mark.parametrize("use_hint", HINTS)
@pytest.mark.parametrize("case", _params(lambda c: c["streaming"]))
def test_stream_chunk_by_chunk(case: dict[str, Any], use_hint: bool) -> None:
    acc = UsageAccumulator(_hint(case, use_hint))
    for chunk in case["payload"]:
        acc.add(chunk)
    _check(acc.usage, case)


@pytest.mark.parametrize("case", _params(lambda c: c["streaming"]))
def test_stream_usage_is_the_last_report_not_a_sum(case: dict[str, Any]) -> None:
    # Feeding a stream twice over must give the same usage: reports are running totals.
    acc = UsageAccumulator()
    for chunk in [*case["payload"], *case["payload"]]:
        acc.add(chunk)
    _check(acc.usage, case)


@pytest.mark.parametrize("case", _params(lambda c: True))
def test_provider_names_of_the_corpus_are_known(case: dict[str, Any]) -> None:
    known = canonical_provider(case["provider"])
    assert (known is None) == (case["provider"] in UNKNOWN_PROVIDERS)


def test_model_and_service_tier_as_the_response_reports() -> None:
    def load(name: str) -> Any:
        return json.loads((CORPUS / name).read_text())["payload"]

    assert extract_model(load("gemini/generate_content_tool_use_prompt_tokens.json")) == "gemini-2.5-pro"
    assert extract_model(load("anthropic/messages_stream_text.json")) == "claude-sonnet-4-5-20250929"
    # Azure's first chunk has model "" (prompt filter results only): the real name comes later.
    assert extract_model(load("azure/chat_stream_prompt_filter_first_chunk.json")) == "gpt-5-nano-2025-08-07"
    assert extract_model(load("hunyuan/native_chat_nonstream.json")) is None
    # response.created says "auto" (what was asked), response.completed "default" (what ran).
    stream = load("openai/responses_stream_response_completed.json")
    assert extract_service_tier(stream[:1]) == "auto"
    assert extract_service_tier(stream) == "default"
    assert extract_service_tier(load("groq/chat_nonstream_cached_reasoning.json")) == "on_demand"
    assert extract_service_tier(load("anthropic/messages_nonstream_basic.json")) == "standard"
    assert extract_service_tier(load("gemini/generate_content_explicit_cached_content.json")) == "standard"
    assert extract_service_tier(load("mistral/chat_nonstream_prompt_cache.json")) is None


# --- the same payloads as SDK objects -------------------------------------------------------------


def _openai_objects(case: dict[str, Any]) -> Any:
    kinds: dict[tuple[str, bool], Any] = {
        ("chat.completions", False): ChatCompletion,
        ("chat.completions", True): ChatCompletionChunk,
        ("completions", False): Completion,
        ("responses", False): Response,
        ("responses", True): ResponseStreamEvent,
    }
    kind = kinds[(case["api"], case["streaming"])]
    if case["streaming"]:
        return [openai_construct(type_=kind, value=chunk) for chunk in case["payload"]]
    return openai_construct(type_=kind, value=case["payload"])


def _anthropic_objects(case: dict[str, Any]) -> Any:
    if case["streaming"]:
        # The SDK skips `ping` events; it yields the rest as typed events.
        events = [chunk for chunk in case["payload"] if chunk.get("type") != "ping"]
        return [anthropic_construct(type_=RawMessageStreamEvent, value=chunk) for chunk in events]
    return anthropic_construct(type_=Message, value=case["payload"])


#: what google-genai rejects that is no usage: fields newer than the SDK (serviceTier), and base64
#: signatures that the corpus trimmed
DROPPABLE = {"extra_forbidden", "bytes_invalid_encoding"}


def _strip_unknown(value: Any, model: Any) -> Any:
    """Validate with google-genai's model (it forbids unknown fields), dropping the fields it rejects."""
    for _ in range(20):
        try:
            return model.model_validate(value)
        except ValidationError as exc:
            unknown = [e["loc"] for e in exc.errors() if e["type"] in DROPPABLE]
            if not unknown:
                raise
            for loc in unknown:
                node = value
                for part in loc[:-1]:
                    node = node[part]
                del node[loc[-1]]
    raise AssertionError("could not validate")


def _gemini_objects(case: dict[str, Any]) -> Any:
    genai_types = pytest.importorskip("google.genai.types")
    payload = json.loads(json.dumps(case["payload"]))
    model = genai_types.GenerateContentResponse
    if case["streaming"]:
        return [_strip_unknown(chunk, model) for chunk in payload]
    return _strip_unknown(payload, model)


SDK_BUILDERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "chat.completions": _openai_objects,
    "completions": _openai_objects,
    "responses": _openai_objects,
    "messages": _anthropic_objects,
    "generateContent": _gemini_objects,
    "streamGenerateContent": _gemini_objects,
}


def _sdk_cases() -> Iterator[Any]:
    yield from _params(lambda c: c["api"] in SDK_BUILDERS)


@pytest.mark.parametrize("use_hint", HINTS)
@pytest.mark.parametrize("case", list(_sdk_cases()))
def test_sdk_objects(case: dict[str, Any], use_hint: bool) -> None:
    objects = SDK_BUILDERS[case["api"]](case)
    hint = _hint(case, use_hint)
    if case["streaming"]:
        assert objects and all(isinstance(o, BaseModel) for o in objects)
        acc = UsageAccumulator(hint)
        for obj in objects:
            acc.add(obj)
        _check(acc.usage, case)
        assert acc.model == extract_model(case["payload"])
    else:
        assert isinstance(objects, BaseModel)
        _check(extract_usage(objects, hint), case)
        assert extract_model(objects) == extract_model(case["payload"])
