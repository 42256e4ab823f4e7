"""A local fake LLM server (OpenAI chat/responses and Anthropic messages, JSON and SSE) for tests and the demo.

Standard library only (`http.server.ThreadingHTTPServer`), deterministic: each model has a fixed reply
and fixed usage, so tests can assert exact token counts. Per model it can report cached, reasoning
and cache-write tokens, a service tier, no usage at all, fail mid-stream with an SSE error, or drop
the connection mid-stream. Like the real APIs it sends a chat stream's usage chunk only when
`stream_options.include_usage` is true, and an OpenRouter-style `usage.cost` only when the request
asks for `usage: {"include": true}`.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class FakeModel:
    """How the fake server answers for one model name."""

    reply: str = "Hello from the fake LLM."
    input_tokens: int = 20
    output_tokens: int = 8
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0  # Anthropic cache_creation_input_tokens
    cache_write_1h_tokens: int = 0  # the 1-hour part of the cache writes
    service_tier: str | None = None  # None: "default", or the request's flex/priority tier
    report_usage: bool = True
    abort_after: int | None = None  # drop the connection after this many content chunks
    error_after: int | None = None  # send an SSE error event after this many content chunks
    delay: float = 0.0  # seconds between chunks
    cost: Decimal = Decimal("0.000123")  # the OpenRouter-style usage.cost, when asked for

    def pieces(self) -> list[str]:
        """The reply as streamed: one word per chunk, the space kept in front as real streams do."""
        words = self.reply.split(" ")
        return [words[0]] + [" " + w for w in words[1:]]


DEFAULT_MODELS: dict[str, FakeModel] = {
    "gpt-4o-mini": FakeModel(reply="Hello there, how can I help you today?", input_tokens=21, output_tokens=10),
    "gpt-4o-cached": FakeModel(input_tokens=1200, cached_tokens=1024, output_tokens=8),
    "o3-mini": FakeModel(reply="The answer is 42.", input_tokens=30, output_tokens=150, reasoning_tokens=128),
    "gpt-4o-flex": FakeModel(input_tokens=40, output_tokens=8, service_tier="flex"),
    "no-usage-model": FakeModel(reply="I report no usage at all.", report_usage=False),
    "abort-model": FakeModel(reply="This reply is cut off before it ends", abort_after=3),
    "error-model": FakeModel(reply="This reply fails midway through", error_after=2),
    "slow-model": FakeModel(reply="one two three four five", input_tokens=9, output_tokens=5, delay=0.02),
    "claude-opus-4-5": FakeModel(
        reply="Hi! I am a fake Claude.",
        input_tokens=12,
        output_tokens=9,
        cached_tokens=2000,
        cache_write_tokens=300,
        cache_write_1h_tokens=100,
    ),
    "claude-haiku-4-5": FakeModel(reply="Short answer.", input_tokens=15, output_tokens=4),
}
#: what an unknown model name gets
FALLBACK_MODEL = FakeModel()


@dataclass
class RecordedRequest:
    """One request the server received (for tests asserting what the client sent)."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked transfer, so a dropped connection is visible to clients
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: tests and the demo own stderr

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.server.models]})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            self._json(400, {"error": {"message": "invalid JSON body", "type": "invalid_request_error"}})
            return
        path = self.path.split("?", 1)[0].rstrip("/")
        self.server.record(RecordedRequest(path, body, {k.lower(): v for k, v in self.headers.items()}))
        model_name = str(body.get("model", ""))
        model = self.server.models.get(model_name, FALLBACK_MODEL)
        stream = bool(body.get("stream"))
        if path.endswith("/chat/completions"):
            self._respond(stream, *_chat(model_name, model, body))
        elif path.endswith("/responses"):
            self._respond(stream, *_responses(model_name, model, body))
        elif path.endswith("/messages"):
            self._respond(stream, *_anthropic(model_name, model, body))
        else:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def _json(self, status: int, payload: Mapping[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _respond(
        self, stream: bool, whole: dict[str, Any], events: Callable[[], Iterator[bytes | None]], model: FakeModel
    ) -> None:
        if not stream:
            self._json(200, whole)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in events():
            if event is None:  # the model drops the connection here, with no terminating chunk
                self.wfile.flush()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
            if model.delay:
                time.sleep(model.delay)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], models: Mapping[str, FakeModel]) -> None:
        super().__init__(address, _Handler)
        self.models = dict(models)
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a client that hangs up (an abandoned stream) is normal here, not worth a traceback on stderr
        pass

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)


def _sse(data: Mapping[str, Any] | str, event: str | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


def _tier(model: FakeModel, body: Mapping[str, Any]) -> str:
    # the response reports the tier actually used: the model's own, a flex/priority request's, else default
    requested = body.get("service_tier")
    return model.service_tier or (requested if requested in ("flex", "priority") else "default")


def _chat_usage(model: FakeModel, body: Mapping[str, Any]) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": model.input_tokens,
        "completion_tokens": model.output_tokens,
        "total_tokens": model.input_tokens + model.output_tokens,
        "prompt_tokens_details": {"cached_tokens": model.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": model.reasoning_tokens, "audio_tokens": 0},
    }
    asked = body.get("usage")
    if isinstance(asked, Mapping) and asked.get("include"):
        usage["cost"] = float(model.cost)
    return usage


def _chat(
    name: str, model: FakeModel, body: Mapping[str, Any]
) -> tuple[dict[str, Any], Callable[[], Iterator[bytes | None]], FakeModel]:
    ident = "chatcmpl-fake0001"
    created = 1_700_000_000
    tier = _tier(model, body)
    whole: dict[str, Any] = {
        "id": ident,
        "object": "chat.completion",
        "created": created,
        "model": name,
        "service_tier": tier,
        "system_fingerprint": "fp_fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": model.reply, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
    }
    if model.report_usage:
        whole["usage"] = _chat_usage(model, body)
    stream_options = body.get("stream_options") or {}
    include_usage = bool(stream_options.get("include_usage")) and model.report_usage

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        c: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": name,
            "service_tier": tier,
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if include_usage:
            c["usage"] = None
        return c

    def events() -> Iterator[bytes | None]:
        yield _sse(chunk({"role": "assistant", "content": "", "refusal": None}))
        for i, piece in enumerate(model.pieces()):
            if model.abort_after is not None and i == model.abort_after:
                yield None
                return
            if model.error_after is not None and i == model.error_after:
                yield _sse({"error": {"message": "the fake model failed midway", "type": "server_error"}})
                return
            yield _sse(chunk({"content": piece}))
        yield _sse(chunk({}, "stop"))
        if include_usage:
            final = chunk({})
            final["choices"] = []
            final["usage"] = _chat_usage(model, body)
            yield _sse(final)
        yield _sse("[DONE]")

    return whole, events, model


def _responses(
    name: str, model: FakeModel, body: Mapping[str, Any]
) -> tuple[dict[str, Any], Callable[[], Iterator[bytes | None]], FakeModel]:
    rid = "resp_fake0001"
    msg_id = "msg_fake0001"
    tier = _tier(model, body)

    def response(status: str, text: str | None) -> dict[str, Any]:
        output = []
        if text is not None:
            output.append(
                {
                    "id": msg_id,
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            )
        r: dict[str, Any] = {
            "id": rid,
            "object": "response",
            "created_at": 1_700_000_000,
            "status": status,
            "model": name,
            "service_tier": tier,
            "output": output,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": None,
        }
        if status == "completed" and model.report_usage:
            r["usage"] = {
                "input_tokens": model.input_tokens,
                "input_tokens_details": {"cached_tokens": model.cached_tokens},
                "output_tokens": model.output_tokens,
                "output_tokens_details": {"reasoning_tokens": model.reasoning_tokens},
                "total_tokens": model.input_tokens + model.output_tokens,
            }
        return r

    def events() -> Iterator[bytes | None]:
        seq = 0

        def ev(kind: str, **fields: Any) -> bytes:
            nonlocal seq
            seq += 1
            return _sse({"type": kind, "sequence_number": seq, **fields}, event=kind)

        yield ev("response.created", response=response("in_progress", None))
        yield ev("response.in_progress", response=response("in_progress", None))
        item = {"id": msg_id, "type": "message", "status": "in_progress", "role": "assistant", "content": []}
        yield ev("response.output_item.added", output_index=0, item=item)
        part = {"type": "output_text", "text": "", "annotations": []}
        yield ev("response.content_part.added", item_id=msg_id, output_index=0, content_index=0, part=part)
        for i, piece in enumerate(model.pieces()):
            if model.abort_after is not None and i == model.abort_after:
                yield None
                return
            if model.error_after is not None and i == model.error_after:
                yield ev("error", code="server_error", message="the fake model failed midway", param=None)
                return
            yield ev(
                "response.output_text.delta", item_id=msg_id, output_index=0, content_index=0, delta=piece, logprobs=[]
            )
        yield ev(
            "response.output_text.done", item_id=msg_id, output_index=0, content_index=0, text=model.reply, logprobs=[]
        )
        yield ev("response.completed", response=response("completed", model.reply))

    return response("completed", model.reply), events, model


def _anthropic(
    name: str, model: FakeModel, body: Mapping[str, Any]
) -> tuple[dict[str, Any], Callable[[], Iterator[bytes | None]], FakeModel]:
    mid = "msg_fake0001"

    def usage(output_tokens: int) -> dict[str, Any]:
        # Anthropic's input_tokens excludes cache reads and writes
        return {
            "input_tokens": model.input_tokens,
            "cache_read_input_tokens": model.cached_tokens,
            "cache_creation_input_tokens": model.cache_write_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": model.cache_write_tokens - model.cache_write_1h_tokens,
                "ephemeral_1h_input_tokens": model.cache_write_1h_tokens,
            },
            "output_tokens": output_tokens,
            "service_tier": model.service_tier or "standard",
        }

    whole: dict[str, Any] = {
        "id": mid,
        "type": "message",
        "role": "assistant",
        "model": name,
        "content": [{"type": "text", "text": model.reply}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage(model.output_tokens),
    }

    def events() -> Iterator[bytes | None]:
        start = {**whole, "content": [], "stop_reason": None, "usage": usage(1)}
        yield _sse({"type": "message_start", "message": start}, event="message_start")
        block = {"type": "text", "text": ""}
        yield _sse({"type": "content_block_start", "index": 0, "content_block": block}, event="content_block_start")
        yield _sse({"type": "ping"}, event="ping")
        for i, piece in enumerate(model.pieces()):
            if model.abort_after is not None and i == model.abort_after:
                yield None
                return
            if model.error_after is not None and i == model.error_after:
                err = {"type": "overloaded_error", "message": "the fake model failed midway"}
                yield _sse({"type": "error", "error": err}, event="error")
                return
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
            yield _sse(delta, event="content_block_delta")
        yield _sse({"type": "content_block_stop", "index": 0}, event="content_block_stop")
        final = {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": model.output_tokens},
        }
        yield _sse(final, event="message_delta")
        yield _sse({"type": "message_stop"}, event="message_stop")

    if not model.report_usage:
        whole.pop("usage")
    return whole, events, model


class FakeLLM:
    """A running fake LLM server: `.url` (ends in /v1), `.requests` (what it received), `.stop()`."""

    def __init__(self, port: int = 0, models: Mapping[str, FakeModel] | None = None, host: str = "127.0.0.1") -> None:
        self._server = _Server((host, port), {**DEFAULT_MODELS, **(models or {})})
        self._thread = threading.Thread(target=self._server.serve_forever, name="fakellm", daemon=True)
        self._thread.start()
        bound_host, bound_port = self._server.server_address[:2]
        self.url = f"http://{bound_host!s}:{bound_port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        return list(self._server.requests)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeLLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_fake_llm(port: int = 0, models: Mapping[str, FakeModel] | None = None) -> tuple[str, Callable[[], None]]:
    """Start the fake server in a background thread: returns its base URL (…/v1) and a stop function."""
    server = FakeLLM(port=port, models=models)
    return server.url, server.stop


def main() -> None:
    """`python -m worker.fakellm [PORT]`: serve until interrupted (for trying clients by hand)."""
    import sys  # noqa: PLC0415

    server = FakeLLM(port=int(sys.argv[1]) if len(sys.argv) > 1 else 8765)
    print(server.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
