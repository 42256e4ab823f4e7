"""Stream and response capture: chunks untouched, exactly one event per call, ok/error/aborted, estimates.

Events are collected in a list here (pure capture logic); tests/e2e/test_sdk_streams.py sends them
through the real publisher to Redis. The SDK tests run the real openai/anthropic clients against the
local fake LLM server (worker/fakellm.py).
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import anthropic
import httpx
import openai
import pytest

import producer
from producer import streams, tokens
from producer.errors import InvalidEventError
from producer.event import UsageEvent
from worker.fakellm import DEFAULT_MODELS, FakeLLM

MSGS = [{"role": "user", "content": "Say hello"}]

CHUNKS: list[dict[str, Any]] = [
    {"id": "c1", "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    {"id": "c1", "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": "Hello"}}]},
    {"id": "c1", "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": " world"}}]},
    {
        "id": "c1",
        "model": "gpt-4o-mini",
        "choices": [],
        "usage": {"prompt_tokens": 11, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 4}},
    },
]


class Events(list[UsageEvent]):
    """A publish callable that keeps what it gets."""

    def __call__(self, event: UsageEvent) -> None:
        self.append(event)


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


@pytest.fixture
def oai(fake: FakeLLM) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=fake.url, api_key="test", max_retries=0)
    yield client
    client.close()


class Boom(Exception):
    pass


def failing(after: int) -> Iterator[dict[str, Any]]:
    yield from CHUNKS[:after]
    raise Boom("connection reset mid-stream")


# -- the generic wrapper --------------------------------------------------------------------------------------


def test_chunks_pass_through_unchanged_and_one_ok_event(events: Events) -> None:
    out = list(
        producer.track_stream(iter(CHUNKS), provider="openai", request={"model": "x"}, org_id="acme", publish=events)
    )
    assert len(out) == len(CHUNKS)
    assert all(a is b for a, b in zip(out, CHUNKS, strict=True))
    [ev] = events
    assert (ev.status, ev.org_id, ev.model, ev.estimated) == ("ok", "acme", "gpt-4o-mini", False)
    assert (ev.usage.input_tokens, ev.usage.cached_input_tokens, ev.usage.output_tokens) == (11, 4, 2)
    assert ev.latency_ms is not None and ev.latency_ms >= 0


def test_error_is_reraised_unchanged_with_one_error_event(events: Events) -> None:
    stream = producer.track_stream(failing(2), provider="openai", model="gpt-4", org_id="acme", publish=events)
    seen = []
    with pytest.raises(Boom) as info:
        for chunk in stream:
            seen.append(chunk)
    assert str(info.value) == "connection reset mid-stream"
    assert seen == CHUNKS[:2]
    [ev] = events
    assert ev.status == "error" and ev.estimated
    assert ev.tags["usagebill.error"] == "Boom"
    assert ev.usage.output_tokens == tokens.count_text("Hello", "gpt-4o-mini")
    stream.close()  # closing a failed stream adds nothing
    assert len(events) == 1


def test_close_early_is_aborted_once(events: Events) -> None:
    stream = producer.track_stream(iter(CHUNKS), provider="openai", org_id="acme", publish=events)
    next(stream)
    stream.close()
    stream.close()
    del stream
    gc.collect()
    assert [e.status for e in events] == ["aborted"]


def test_break_out_of_with_is_aborted(events: Events) -> None:
    with producer.track_stream(iter(CHUNKS), provider="openai", org_id="acme", publish=events) as stream:
        for _ in stream:
            break
    assert [e.status for e in events] == ["aborted"]


def test_garbage_collected_stream_is_aborted(events: Events) -> None:
    stream = producer.track_stream(iter(CHUNKS), provider="openai", org_id="acme", publish=events)
    next(stream)
    del stream
    gc.collect()
    never_read = producer.track_stream(iter(CHUNKS), provider="openai", org_id="acme", publish=events)
    del never_read
    gc.collect()
    assert [e.status for e in events] == ["aborted", "aborted"]


def test_wrapper_dropped_while_a_for_loop_reads_it_is_not_aborted(events: Events) -> None:
    # the for loop holds only the iterator it got from the (temporary) wrapper
    for _ in producer.track_stream(iter(CHUNKS), provider="openai", org_id="acme", publish=events):
        gc.collect()
    for _ in producer.track_sse_lines(iter(["data: {}", ""]), provider="openai", org_id="acme", publish=events):
        gc.collect()
    assert [e.status for e in events] == ["ok", "ok"]


def test_finished_stream_collected_adds_nothing(events: Events) -> None:
    stream = producer.track_stream(iter(CHUNKS), provider="openai", org_id="acme", publish=events)
    list(stream)
    stream.close()
    del stream
    gc.collect()
    assert [e.status for e in events] == ["ok"]


def test_estimate_when_no_usage(events: Events) -> None:
    request = {"model": "gpt-4o", "messages": MSGS}
    list(producer.track_stream(iter(CHUNKS[:3]), provider="openai", request=request, org_id="acme", publish=events))
    [ev] = events
    assert ev.estimated
    assert ev.usage.input_tokens == tokens.count_messages(MSGS, "gpt-4o")
    assert ev.usage.output_tokens == tokens.count_text("Hello world", "gpt-4o")
    assert ev.tags["usagebill.estimate_encoding"] == "o200k_base"


def test_context_from_billing_context(events: Events) -> None:
    with producer.billing_context(org_id="acme", user_id="u1", session_id="s1", request_type="chat", tags={"a": "b"}):
        stream = producer.track_stream(iter(CHUNKS), provider="openai", publish=events)
    list(stream)  # consumed outside the scope: the context is the request's
    [ev] = events
    assert (ev.org_id, ev.user_id, ev.session_id, ev.request_type, ev.tags) == ("acme", "u1", "s1", "chat", {"a": "b"})


def test_no_org_fails_before_the_call(events: Events) -> None:
    with pytest.raises(InvalidEventError, match="org_id"):
        producer.track_stream(iter(CHUNKS), provider="openai", publish=events)


def test_publish_failure_never_reaches_the_app() -> None:
    def broken(event: UsageEvent) -> None:
        raise RuntimeError("redis on fire")

    assert len(list(producer.track_stream(iter(CHUNKS), provider="openai", org_id="acme", publish=broken))) == 4


async def agen(chunks: list[dict[str, Any]], fail: bool = False) -> AsyncIterator[dict[str, Any]]:
    for chunk in chunks:
        await asyncio.sleep(0)
        yield chunk
    if fail:
        raise Boom("async failure")


def test_async_ok_error_aborted(events: Events) -> None:
    async def main() -> None:
        out = [c async for c in producer.track_stream(agen(CHUNKS), provider="openai", org_id="acme", publish=events)]
        assert all(a is b for a, b in zip(out, CHUNKS, strict=True))
        with pytest.raises(Boom):
            async for _ in producer.track_stream(
                agen(CHUNKS[:2], fail=True), provider="openai", org_id="acme", publish=events
            ):
                pass
        async with producer.track_stream(agen(CHUNKS), provider="openai", org_id="acme", publish=events) as stream:
            async for _ in stream:
                break

    asyncio.run(main())
    assert [e.status for e in events] == ["ok", "error", "aborted"]
    assert events[0].usage.input_tokens == 11


def test_async_stream_collected_midway_is_aborted(events: Events) -> None:
    async def main() -> None:
        stream = producer.track_stream(agen(CHUNKS), provider="openai", org_id="acme", publish=events)
        await stream.__anext__()
        del stream
        gc.collect()

    asyncio.run(main())
    assert [e.status for e in events] == ["aborted"]


def test_async_publish_callable_may_be_a_coroutine() -> None:
    got: list[UsageEvent] = []

    async def publish(event: UsageEvent) -> None:
        await asyncio.sleep(0)
        got.append(event)

    async def main() -> None:
        async for _ in producer.track_stream(agen(CHUNKS), provider="openai", org_id="acme", publish=publish):
            pass

    asyncio.run(main())
    assert [e.status for e in got] == ["ok"]


# -- the real SDKs against the fake server ---------------------------------------------------------------------


def test_openai_chat_stream_injects_include_usage_and_hides_its_chunk(
    fake: FakeLLM, oai: openai.OpenAI, events: Events
) -> None:
    plain = list(oai.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True))
    client = producer.instrument(oai, org_id="acme", publish=events)
    wrapped = list(client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True))
    assert fake.requests[-1].body["stream_options"] == {"include_usage": True}
    assert "stream_options" not in fake.requests[-2].body
    # the app sees exactly the stream it asked for: same chunks, the usage chunk it did not ask for hidden
    assert [c.model_dump() for c in wrapped] == [c.model_dump() for c in plain]
    assert all(type(c) is openai.types.chat.ChatCompletionChunk for c in wrapped)
    [ev] = events
    m = DEFAULT_MODELS["gpt-4o-mini"]
    assert (ev.status, ev.provider, ev.model, ev.estimated) == ("ok", "openai", "gpt-4o-mini", False)
    assert (ev.usage.input_tokens, ev.usage.output_tokens) == (m.input_tokens, m.output_tokens)


def test_openai_chat_stream_app_asked_for_usage_keeps_its_chunk(oai: openai.OpenAI, events: Events) -> None:
    client = producer.instrument(oai, org_id="acme", publish=events)
    chunks = list(
        client.chat.completions.create(
            model="o3-mini", messages=MSGS, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    [ev] = events
    assert (ev.usage.output_tokens, ev.usage.reasoning_tokens) == (150, 128)


def test_openrouter_usage_accounting_injected(fake: FakeLLM, events: Events) -> None:
    base = openai.OpenAI(base_url=fake.url, api_key="test", max_retries=0)
    client = producer.instrument(base, provider="openrouter", org_id="acme", publish=events)
    list(client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True, extra_body={"top_k": 3}))
    body = fake.requests[-1].body
    assert body["usage"] == {"include": True}
    assert body["top_k"] == 3
    assert body["stream_options"] == {"include_usage": True}
    client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    assert fake.requests[-1].body["usage"] == {"include": True}
    base.close()
    assert [e.provider for e in events] == ["openrouter", "openrouter"]
    assert all(e.usage.provider_cost == Decimal("0.000123") for e in events)


def test_with_options_keeps_the_instrumentation(oai: openai.OpenAI, events: Events) -> None:
    client = producer.instrument(oai, org_id="acme", publish=events)
    client.with_options(timeout=5).chat.completions.create(
        model="gpt-4o-mini", messages=MSGS, usagebill={"user_id": "u7"}
    )
    [ev] = events
    assert (ev.model, ev.user_id, ev.status) == ("gpt-4o-mini", "u7", "ok")


def test_openai_non_stream_and_service_tier_reported(oai: openai.OpenAI, events: Events) -> None:
    client = producer.instrument(oai, org_id="acme", publish=events)
    response = client.chat.completions.create(model="gpt-4o-flex", messages=MSGS, service_tier="auto")
    assert isinstance(response, openai.types.chat.ChatCompletion)
    client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, service_tier="flex")
    client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, service_tier="auto")
    assert [e.service_tier for e in events] == ["flex", "flex", None]  # the tier the response reports


def test_openai_no_usage_model_is_estimated(oai: openai.OpenAI, events: Events) -> None:
    client = producer.instrument(oai, org_id="acme", publish=events)
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="no-usage-model", messages=MSGS, stream=True)
    )
    client.chat.completions.create(model="no-usage-model", messages=MSGS)
    reply = DEFAULT_MODELS["no-usage-model"].reply
    assert text == reply
    for ev in events:
        assert ev.estimated and ev.status == "ok"
        assert ev.usage.input_tokens == tokens.count_messages(MSGS, "no-usage-model")
        assert ev.usage.output_tokens == tokens.count_text(reply, "no-usage-model")
        assert ev.tags["usagebill.estimate_encoding"] == "cl100k_base"


def test_openai_midstream_failures_are_errors(oai: openai.OpenAI, events: Events) -> None:
    client = producer.instrument(oai, org_id="acme", publish=events)
    with pytest.raises(openai.APIError, match="failed midway"):
        list(client.chat.completions.create(model="error-model", messages=MSGS, stream=True))
    with pytest.raises(Exception):  # noqa: B017 - the transport error the SDK surfaces for a dropped connection
        list(client.chat.completions.create(model="abort-model", messages=MSGS, stream=True))
    assert [e.status for e in events] == ["error", "error"]
    assert all(e.estimated and e.usage.output_tokens > 0 for e in events)


def test_request_failure_is_an_error_event_with_no_usage(events: Events) -> None:
    dead = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="test", max_retries=0)
    client = producer.instrument(dead, org_id="acme", publish=events)
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True)
    dead.close()
    [ev] = events
    assert (ev.status, ev.estimated, ev.usage.input_tokens, ev.usage.output_tokens) == ("error", False, 0, 0)


def test_openai_gc_and_close_of_sdk_stream(oai: openai.OpenAI, events: Events) -> None:
    client = producer.instrument(oai, org_id="acme", publish=events)
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True)
    next(stream)
    next(stream)
    del stream
    gc.collect()
    with client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True) as stream2:
        next(stream2)
    assert stream2.response.is_closed
    assert [e.status for e in events] == ["aborted", "aborted"]
    assert events[0].estimated and events[0].usage.output_tokens == 1  # "Hello" was read


def test_openai_stream_helpers(fake: FakeLLM, oai: openai.OpenAI, events: Events) -> None:
    client = producer.instrument(oai, org_id="acme", publish=events)
    with client.chat.completions.stream(model="o3-mini", messages=MSGS) as stream:
        assert stream.get_final_completion().choices[0].message.content == DEFAULT_MODELS["o3-mini"].reply
    assert fake.requests[-1].body["stream_options"] == {"include_usage": True}
    with client.responses.stream(model="gpt-4o-cached", input="hi") as rstream:
        for _ in rstream:
            pass
    with client.chat.completions.stream(model="gpt-4o-mini", messages=MSGS) as stream:
        for _ in stream:
            break
    assert [e.status for e in events] == ["ok", "ok", "aborted"]
    assert (events[0].usage.output_tokens, events[0].usage.reasoning_tokens) == (150, 128)
    assert (events[1].usage.input_tokens, events[1].usage.cached_input_tokens) == (1200, 1024)


def test_responses_stream(oai: openai.OpenAI, events: Events) -> None:
    client = producer.instrument(oai, org_id="acme", publish=events)
    kinds = [e.type for e in client.responses.create(model="gpt-4o-cached", input="hi", stream=True)]
    assert kinds[-1] == "response.completed"
    [ev] = events
    assert (ev.usage.input_tokens, ev.usage.cached_input_tokens, ev.usage.output_tokens) == (1200, 1024, 8)


def test_anthropic_create_and_stream_helper(fake: FakeLLM, events: Events) -> None:
    base = anthropic.Anthropic(base_url=fake.url, api_key="test", max_retries=0)
    client = producer.instrument(base, user_id="u9", publish=events)
    with producer.billing_context(org_id="acme"):
        kinds = [
            e.type for e in client.messages.create(model="claude-opus-4-5", max_tokens=64, messages=MSGS, stream=True)
        ]
        with client.messages.stream(model="claude-opus-4-5", max_tokens=64, messages=MSGS) as stream:
            text = "".join(stream.text_stream)
        message = client.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=MSGS)
        with client.messages.stream(model="claude-opus-4-5", max_tokens=64, messages=MSGS) as stream:
            for _ in stream:
                break
    base.close()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert text == DEFAULT_MODELS["claude-opus-4-5"].reply
    assert message.content[0].text == DEFAULT_MODELS["claude-haiku-4-5"].reply
    assert [e.status for e in events] == ["ok", "ok", "ok", "aborted"]
    assert all(e.provider == "anthropic" and e.user_id == "u9" and e.org_id == "acme" for e in events)
    u = events[0].usage
    # Anthropic's input excludes cache reads and writes: normalized input adds them
    assert (u.input_tokens, u.cached_input_tokens, u.cache_write_tokens, u.cache_write_1h_tokens) == (
        2312,
        2000,
        300,
        100,
    )
    assert u.output_tokens == 9
    assert events[1].usage == events[0].usage
    assert (events[2].usage.input_tokens, events[2].usage.output_tokens) == (15, 4)


def test_fan_out_threads_each_get_their_event(oai: openai.OpenAI, events: Events) -> None:
    models = ["gpt-4o-mini", "o3-mini", "gpt-4o-cached", "slow-model", "no-usage-model"]
    client = producer.instrument(oai, org_id="acme", publish=events)
    texts: dict[str, str] = {}

    def run(model: str) -> None:
        with producer.billing_context(user_id=f"user-{model}"):
            stream = client.chat.completions.create(model=model, messages=MSGS, stream=True)
        texts[model] = "".join(c.choices[0].delta.content or "" for c in stream)

    threads = [threading.Thread(target=run, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(e.model for e in events) == sorted(models)
    assert len({e.event_id for e in events}) == len(models)
    for ev in events:
        assert ev.user_id == f"user-{ev.model}"
        assert texts[ev.model] == DEFAULT_MODELS[ev.model].reply
        if ev.model != "no-usage-model":
            assert ev.usage.input_tokens == DEFAULT_MODELS[ev.model].input_tokens


def test_fan_out_asyncio_gather(fake: FakeLLM, events: Events) -> None:
    models = ["gpt-4o-mini", "o3-mini", "slow-model", "claude-haiku-4-5"]

    async def main() -> None:
        base = openai.AsyncOpenAI(base_url=fake.url, api_key="test", max_retries=0)
        abase = anthropic.AsyncAnthropic(base_url=fake.url, api_key="test", max_retries=0)
        oc = producer.instrument(base, org_id="acme", publish=events)
        ac = producer.instrument(abase, org_id="acme", publish=events)

        async def one(model: str) -> str:
            with producer.billing_context(session_id=f"s-{model}"):
                if model.startswith("claude"):
                    async with ac.messages.stream(model=model, max_tokens=64, messages=MSGS) as s:
                        return "".join([t async for t in s.text_stream])
                stream = await oc.chat.completions.create(model=model, messages=MSGS, stream=True)
                return "".join([c.choices[0].delta.content or "" async for c in stream])

        texts = await asyncio.gather(*(one(m) for m in models))
        assert texts == [DEFAULT_MODELS[m].reply for m in models]
        await base.close()
        await abase.close()

    asyncio.run(main())
    assert sorted(e.model for e in events) == sorted(models)
    assert all(e.session_id == f"s-{e.model}" and e.status == "ok" and not e.estimated for e in events)


# -- raw SSE lines ---------------------------------------------------------------------------------------------


def test_sse_lines_httpx_sync_unchanged(fake: FakeLLM, events: Events) -> None:
    body = {"model": "gpt-4o-mini", "messages": MSGS, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.Client() as http:
        with http.stream("POST", fake.url + "/chat/completions", json=body) as r:
            plain = list(r.iter_lines())
        with http.stream("POST", fake.url + "/chat/completions", json=body) as r:
            wrapped = list(
                producer.track_sse_lines(r.iter_lines(), provider="openai", request=body, org_id="acme", publish=events)
            )
    assert wrapped == plain and plain[-2] == "data: [DONE]"
    [ev] = events
    assert (ev.usage.input_tokens, ev.usage.output_tokens, ev.estimated) == (21, 10, False)


def test_sse_lines_anthropic_bytes_async(fake: FakeLLM, events: Events) -> None:
    body = {"model": "claude-opus-4-5", "max_tokens": 64, "messages": MSGS, "stream": True}

    async def main() -> list[bytes]:
        async with httpx.AsyncClient() as http, http.stream("POST", fake.url + "/messages", json=body) as r:
            raw = b"".join([b async for b in r.aiter_bytes()])
        lines = [line + b"\n" for line in raw.split(b"\n")]  # as aiohttp's content iterator yields them

        async def feed() -> AsyncIterator[bytes]:
            for line in lines:
                yield line

        out = [x async for x in producer.track_sse_lines(feed(), provider="anthropic", org_id="acme", publish=events)]
        assert out == lines
        return out

    asyncio.run(main())
    [ev] = events
    assert (ev.usage.input_tokens, ev.usage.cached_input_tokens, ev.usage.output_tokens) == (2312, 2000, 9)
    assert ev.model == "claude-opus-4-5"


def test_sse_lines_error_event_and_estimate(fake: FakeLLM, events: Events) -> None:
    body = {"model": "error-model", "messages": MSGS, "stream": True}
    with httpx.Client() as http, http.stream("POST", fake.url + "/chat/completions", json=body) as r:
        list(producer.track_sse_lines(r.iter_lines(), provider="openai", request=body, org_id="acme", publish=events))
    [ev] = events
    assert ev.status == "error" and ev.estimated
    assert ev.usage.output_tokens == tokens.count_text("This reply", "error-model")


ANTHROPIC_FAILED = [
    {"type": "message_start", "message": {"model": "claude-x", "usage": {"input_tokens": 12, "output_tokens": 1}}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
    {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
]


def test_dict_stream_ending_in_an_error_event_is_an_error_like_its_raw_lines(events: Events) -> None:
    # the same failed stream as dict chunks (sync and async) and as raw SSE lines: one status for all three
    list(producer.track_stream(iter(ANTHROPIC_FAILED), provider="anthropic", org_id="acme", publish=events))

    async def chunks() -> AsyncIterator[dict[str, Any]]:
        for c in ANTHROPIC_FAILED:
            yield c

    async def drain() -> None:
        async for _ in producer.track_stream(chunks(), provider="anthropic", org_id="acme", publish=events):
            pass

    asyncio.run(drain())
    lines = [line for c in ANTHROPIC_FAILED for line in (f"event: {c['type']}", f"data: {json.dumps(c)}", "")]
    list(producer.track_sse_lines(iter(lines), provider="anthropic", org_id="acme", publish=events))
    assert [e.status for e in events] == ["error", "error", "error"]
    assert all(e.usage.input_tokens == 12 for e in events)


def test_a_clean_dict_stream_stays_ok(events: Events) -> None:
    done = [*ANTHROPIC_FAILED[:2], {"type": "message_delta", "usage": {"output_tokens": 5}}, {"type": "message_stop"}]
    list(producer.track_stream(iter(done), provider="anthropic", org_id="acme", publish=events))
    [ev] = events
    assert (ev.status, ev.usage.input_tokens, ev.usage.output_tokens) == ("ok", 12, 5)


@pytest.mark.parametrize(
    ("base_url", "provider"),
    [
        ("https://api.openai.com/v1", "openai"),
        ("https://openrouter.ai/api/v1", "openrouter"),
        ("https://api.x.ai/v1", "xai"),
        ("https://api.deepseek.com", "deepseek"),
        ("https://dashscope-intl.aliyuncs.com/compatible-mode/v1", "qwen"),
        ("https://api.moonshot.ai/v1", "moonshot"),
        ("https://generativelanguage.googleapis.com/v1beta/openai/", "gemini"),
        ("http://localhost:8000/v1", "openai"),
    ],
)
def test_an_openai_client_is_attributed_to_the_provider_its_base_url_serves(base_url: str, provider: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key="test")
    assert producer.instrument(client, org_id="acme")._provider == provider
    client.close()


def test_unwrap_reads_a_stored_data_field_only() -> None:
    # mistralai's CompletionEvent keeps the chunk in a field; a `data` property is never evaluated
    # (google-genai's LiveServerMessage.data joins every inline audio part and logs a warning)
    class Wrapper:
        def __init__(self, data: Any) -> None:
            self.data = data

    class Computed:
        @property
        def data(self) -> Any:
            raise AssertionError("a data property was evaluated")

    chunk = SimpleNamespace(choices=[], usage=None, model="m")
    assert streams.unwrap(Wrapper(chunk)) is chunk
    computed = Computed()
    assert streams.unwrap(computed) is computed
    text_event = Wrapper('{"choices": []}')  # an SSE event whose data is the JSON text: left as it is
    assert streams.unwrap(text_event) is text_event
    typed = SimpleNamespace(type="response.completed", data=chunk)
    assert streams.unwrap(typed) is typed
