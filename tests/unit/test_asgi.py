"""UsageMiddleware: byte-identical responses, usage read from JSON and SSE as they pass, failures swallowed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import producer
from producer import tokens
from producer.asgi import UsageMiddleware
from producer.event import UsageEvent

MSGS = [{"role": "user", "content": "Say hello"}]
USAGE = {"prompt_tokens": 17, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 8}}


def sse_body(with_usage: bool = True) -> bytes:
    chunks: list[dict[str, Any]] = [
        {"id": "c", "model": "gpt-4o-mini", "service_tier": "flex", "choices": [{"index": 0, "delta": {"content": w}}]}
        for w in ("Hello", " there", " — ünïcode", " friend")
    ]
    if with_usage:
        chunks.append({"id": "c", "model": "gpt-4o-mini", "choices": [], "usage": USAGE})
    text = "".join(f"data: {json.dumps(c, ensure_ascii=False)}\r\n\r\n" for c in chunks) + "data: [DONE]\n\n"
    return text.encode()


def pieces(data: bytes, size: int) -> list[bytes]:
    # arbitrary boundaries, cutting lines and multi-byte characters in half
    return [data[i : i + size] for i in range(0, len(data), size)]


async def chat(request: Request) -> Response:
    body = await request.json()
    if body.get("fail"):
        raise RuntimeError("app failure")
    if body.get("status"):
        return JSONResponse({"error": {"message": "rate limited"}}, status_code=body["status"])
    if body.get("stream"):
        data = sse_body(with_usage=body.get("usage", True))

        async def gen() -> AsyncIterator[bytes]:
            for piece in pieces(data, 7):
                yield piece

        return StreamingResponse(gen(), media_type="text/event-stream")
    return JSONResponse(
        {
            "id": "x",
            "object": "chat.completion",
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}}],
            "usage": USAGE,
        }
    )


async def other(request: Request) -> Response:
    return JSONResponse({"usage": USAGE, "model": "gpt-4o"})


def make_app() -> Starlette:
    return Starlette(
        routes=[Route("/v1/chat/completions", chat, methods=["POST"]), Route("/health", other, methods=["POST"])]
    )


class Events(list[UsageEvent]):
    def __call__(self, event: UsageEvent) -> None:
        self.append(event)


async def call(app: Any, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post(path, json=body, headers=headers or {})


HEADERS = {"X-Org-Id": "acme", "X-User-Id": "u1"}


def both(body: dict[str, Any], mw_kwargs: dict[str, Any] | None = None, path: str = "/v1/chat/completions") -> tuple:
    events = Events()
    plain = make_app()
    wrapped = UsageMiddleware(make_app(), publish=events, **(mw_kwargs or {}))
    a = asyncio.run(call(plain, path, body, HEADERS))
    b = asyncio.run(call(wrapped, path, body, HEADERS))
    return a, b, events


def same(a: httpx.Response, b: httpx.Response) -> None:
    assert a.status_code == b.status_code
    assert a.content == b.content
    assert a.headers.raw == b.headers.raw


def test_json_response_untouched_and_recorded() -> None:
    a, b, events = both({"model": "gpt-4o-mini", "messages": MSGS})
    same(a, b)
    [ev] = events
    assert (ev.org_id, ev.user_id, ev.provider, ev.model, ev.status) == (
        "acme",
        "u1",
        "openai",
        "gpt-4o-mini-2024-07-18",
        "ok",
    )
    assert (ev.usage.input_tokens, ev.usage.cached_input_tokens, ev.usage.output_tokens, ev.estimated) == (
        17,
        8,
        5,
        False,
    )


def test_sse_response_untouched_and_recorded_across_split_lines() -> None:
    a, b, events = both({"model": "gpt-4o-mini", "messages": MSGS, "stream": True})
    same(a, b)
    assert b.content == sse_body()
    [ev] = events
    assert (ev.usage.input_tokens, ev.usage.output_tokens, ev.service_tier, ev.estimated) == (17, 5, "flex", False)


def test_sse_without_usage_is_estimated_from_the_request() -> None:
    a, b, events = both({"model": "gpt-4o-mini", "messages": MSGS, "stream": True, "usage": False})
    same(a, b)
    [ev] = events
    assert ev.estimated
    assert ev.usage.input_tokens == tokens.count_messages(MSGS, "gpt-4o-mini")
    assert ev.usage.output_tokens == tokens.count_text("Hello there — ünïcode friend", "gpt-4o-mini")


def test_routes_not_configured_are_left_alone() -> None:
    a, b, events = both({"model": "gpt-4o"}, path="/health")
    same(a, b)
    assert events == []
    _, _, events = both({"model": "gpt-4o"}, {"routes": ["/he*"]}, path="/health")
    assert len(events) == 1


def test_error_status_is_an_error_event_with_no_usage() -> None:
    a, b, events = both({"model": "gpt-4o-mini", "messages": MSGS, "status": 429})
    same(a, b)
    [ev] = events
    assert (ev.status, ev.usage.input_tokens, ev.usage.output_tokens, ev.estimated) == ("error", 0, 0, False)


def test_app_exception_propagates_untouched() -> None:
    events = Events()
    app = UsageMiddleware(make_app(), publish=events)
    with pytest.raises(RuntimeError, match="app failure"):
        asyncio.run(
            app(
                {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []},
                _receive(json.dumps({"fail": True}).encode()),
                _discard,
            )
        )


def test_failures_inside_the_middleware_never_break_the_response(caplog: pytest.LogCaptureFixture) -> None:
    def bad_org(scope: Any) -> str:
        raise KeyError("no tenant")

    def bad_publish(event: UsageEvent) -> None:
        raise ConnectionError("redis down")

    for kwargs in ({"org_from": bad_org}, {"publish": bad_publish}):
        for body in ({"model": "m", "messages": MSGS}, {"model": "m", "messages": MSGS, "stream": True}):
            plain = asyncio.run(call(make_app(), "/v1/chat/completions", body, HEADERS))
            wrapped = asyncio.run(call(UsageMiddleware(make_app(), **kwargs), "/v1/chat/completions", body, HEADERS))
            same(plain, wrapped)
    assert "usage middleware" in caplog.text


def test_no_org_means_no_event_and_an_intact_response() -> None:
    events = Events()
    body = {"model": "m", "messages": MSGS, "stream": True}
    plain = asyncio.run(call(make_app(), "/v1/chat/completions", body))
    wrapped = asyncio.run(call(UsageMiddleware(make_app(), publish=events), "/v1/chat/completions", body))
    same(plain, wrapped)
    assert events == []
    with producer.billing_context(org_id="from-context"):
        asyncio.run(call(UsageMiddleware(make_app(), publish=events), "/v1/chat/completions", body))
    assert [e.org_id for e in events] == ["from-context"]


def _receive(body: bytes) -> Any:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _discard(message: Any) -> None:
    pass


def test_stream_is_passed_on_at_once_not_buffered() -> None:
    """The app sends its second chunk only after the client has the first: buffering would deadlock."""
    events = Events()
    got_first = asyncio.Event()
    client_saw: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send(
            {"type": "http.response.body", "body": b'data: {"model": "gpt-4o", "choices": []}\n\n', "more_body": True}
        )
        await asyncio.wait_for(got_first.wait(), timeout=5)
        usage = json.dumps({"model": "gpt-4o", "choices": [], "usage": USAGE}).encode()
        await send({"type": "http.response.body", "body": b"data: " + usage + b"\n\n", "more_body": False})

    async def send(message: Any) -> None:
        if message["type"] == "http.response.body":
            client_saw.append(message["body"])
            got_first.set()

    mw = UsageMiddleware(app, publish=events)
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [(b"x-org-id", b"acme")]}
    asyncio.run(mw(scope, _receive(b"{}"), send))
    assert len(client_saw) == 2
    [ev] = events
    assert ev.usage.input_tokens == 17


def test_client_gone_midstream_is_aborted() -> None:
    events = Events()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        await send(
            {"type": "http.response.body", "body": b'data: {"model": "gpt-4o", "choices": []}\n\n', "more_body": True}
        )
        # the client disconnected: the app stops without ending the body

    mw = UsageMiddleware(app, publish=events)
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [(b"x-org-id", b"acme")]}
    asyncio.run(mw(scope, _receive(json.dumps({"model": "gpt-4o", "messages": MSGS}).encode()), _discard))
    [ev] = events
    assert (ev.status, ev.estimated, ev.model) == ("aborted", True, "gpt-4o")
