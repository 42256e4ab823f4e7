"""ASGI middleware: one usage event per LLM response an app serves itself (gateways, proxies, chat endpoints).

Pure ASGI: it wraps `send` and `receive` and never changes, delays or holds back a byte. For the
configured routes it reads the usage the response carries as it passes: a JSON body (copied up to
`max_json_bytes`, parsed at its end) or a `text/event-stream` body (split into lines as it flows).
Org and user come from the request (`org_from(scope)`, `user_from(scope)`; by default the
`X-Org-Id`/`X-User-Id` headers or the `billing_context` in force). The request's JSON body is copied
(bounded) only to estimate the prompt when the response reports no usage. Anything that goes wrong
inside the middleware is logged and swallowed: the response always goes out as the app made it.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from producer.context import current_context
from producer.sse import SSEParser
from producer.streams import Publish, _Call

logger = logging.getLogger("usagebill.producer")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Route = str | re.Pattern[str]


def header(scope: Scope, name: str) -> str | None:
    """A request header's value (latin-1 decoded), None if absent."""
    key = name.lower().encode("latin-1")
    for k, v in scope.get("headers") or ():
        if k.lower() == key:
            return bytes(v).decode("latin-1")
    return None


def _default_org(scope: Scope) -> str | None:
    return header(scope, "x-org-id") or current_context().org_id


def _default_user(scope: Scope) -> str | None:
    return header(scope, "x-user-id") or current_context().user_id


class _Tap:
    """What the middleware learns from one request and its response."""

    def __init__(self, mw: UsageMiddleware, scope: Scope) -> None:
        self.mw = mw
        self.scope = scope
        self.started = time.perf_counter()
        self.request_body = bytearray()
        self.request_too_big = False
        self.kind: str | None = None  # "json" | "sse" | None (not ours to read)
        self.status_code = 0
        self.body = bytearray()
        self.body_too_big = False
        self.pending = b""  # an SSE line not yet ended
        self.parser: SSEParser | None = None
        self.call: _Call | None = None
        self.finished = False

    # request side
    def on_receive(self, message: Message) -> None:
        if message.get("type") != "http.request" or self.request_too_big:
            return
        chunk = message.get("body") or b""
        if len(self.request_body) + len(chunk) > self.mw.max_request_bytes:
            self.request_too_big = True
            self.request_body.clear()
        else:
            self.request_body += chunk

    def request(self) -> dict[str, Any]:
        if self.request_too_big or not self.request_body:
            return {}
        try:
            body = json.loads(self.request_body)
        except ValueError:
            return {}
        return body if isinstance(body, dict) else {}

    # response side
    def on_start(self, message: Message) -> None:
        self.status_code = int(message.get("status", 0))
        ctype = ""
        for k, v in message.get("headers") or ():
            if bytes(k).lower() == b"content-type":
                ctype = bytes(v).decode("latin-1").lower()
        if "text/event-stream" in ctype:
            self.call = self._new_call()
            if self.call is not None:
                self.kind = "sse"
                self.parser = SSEParser(self.call)
        elif "json" in ctype:
            self.kind = "json"

    def _new_call(self) -> _Call | None:
        ctx = current_context().merged(org_id=self.mw.org_from(self.scope), user_id=self.mw.user_from(self.scope))
        if not ctx.org_id:
            # nobody to bill: not an error of the response; say so once per request, without a traceback
            logger.warning(
                "usagebill: no org for %s (org_from returned nothing): no usage event", self.scope.get("path")
            )
            return None
        return _Call(
            provider=self.mw.provider,
            request=self.request(),
            context=ctx,
            publish=self.mw.publish,
            started=self.started,
        )

    def on_body(self, message: Message) -> bool:
        """Read one body message; True when the response is complete."""
        chunk = message.get("body") or b""
        more = bool(message.get("more_body"))
        if self.kind == "json":
            if not self.body_too_big:
                if len(self.body) + len(chunk) > self.mw.max_json_bytes:
                    self.body_too_big = True
                    self.body.clear()
                else:
                    self.body += chunk
        elif self.kind == "sse" and self.parser is not None and chunk:
            lines = (self.pending + bytes(chunk)).split(b"\n")
            self.pending = lines.pop()
            for line in lines:
                if line[:5] == b"data:" or line[:6] == b"event:" or not line.strip():
                    self.parser.feed(line.decode("utf-8", "replace").rstrip("\r"))
        return not more

    def finish(self, status: str | None = None, error: BaseException | None = None) -> Any:
        """The event of this response (or None when there is nothing to record)."""
        if self.finished or self.kind is None:
            return None
        self.finished = True
        if self.kind == "json":
            if self.body_too_big:
                logger.warning(
                    "usagebill: JSON response on %s over %d bytes: not read, no event",
                    self.scope.get("path"),
                    self.mw.max_json_bytes,
                )
                return None
            if not self.body:
                return None
            try:
                payload = json.loads(self.body)
            except ValueError:
                return None
            self.call = self._new_call()
            if self.call is None:
                return None
            final = status or ("ok" if self.status_code < 400 else "error")
            if self.status_code >= 400:
                return self.call.finish("error")  # refused or failed: nothing generated, zero usage
            return self.call.finish(final, error=error, response=payload)
        assert self.call is not None and self.parser is not None
        if self.pending:
            self.parser.feed(self.pending.decode("utf-8", "replace").rstrip("\r"))
            self.pending = b""
        final = status or ("error" if self.status_code >= 400 else self.parser.status())
        return self.call.finish(final, error=error)


class UsageMiddleware:
    """Publish a usage event for each LLM response served on `routes`, reading it as it passes.

    `routes`: exact paths, prefixes ending in `*`, or compiled regular expressions (full match).
    `provider`: whose response shape the app serves (`openai`, `anthropic`, ...). `org_from` and
    `user_from` take the ASGI scope and return the org/user to bill (None: the `billing_context`).
    """

    def __init__(
        self,
        app: ASGIApp,
        routes: Iterable[Route] = ("/v1/chat/completions", "/v1/responses", "/v1/messages"),
        *,
        provider: str = "openai",
        org_from: Callable[[Scope], str | None] = _default_org,
        user_from: Callable[[Scope], str | None] = _default_user,
        publish: Publish | None = None,
        max_json_bytes: int = 8 * 1024 * 1024,
        max_request_bytes: int = 1024 * 1024,
    ) -> None:
        self.app = app
        self.routes = tuple(routes)
        self.provider = provider
        self.org_from = org_from
        self.user_from = user_from
        self.publish = publish
        self.max_json_bytes = max_json_bytes
        self.max_request_bytes = max_request_bytes

    def matches(self, path: str) -> bool:
        for route in self.routes:
            if isinstance(route, re.Pattern):
                if route.fullmatch(path):
                    return True
            elif route.endswith("*"):
                if path.startswith(route[:-1]):
                    return True
            elif path == route:
                return True
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or not self.matches(str(scope.get("path", ""))):
            await self.app(scope, receive, send)
            return
        tap = _Tap(self, scope)
        broken = False

        def trouble() -> None:
            nonlocal broken
            broken = True
            logger.exception("usagebill: usage middleware failed on %s; the response is untouched", scope.get("path"))

        async def tapped_receive() -> Message:
            message = await receive()
            if not broken:
                try:
                    tap.on_receive(message)
                except Exception:
                    trouble()
            return message

        async def tapped_send(message: Message) -> None:
            done = False
            if not broken:
                try:
                    kind = message.get("type")
                    if kind == "http.response.start":
                        tap.on_start(message)
                    elif kind == "http.response.body":
                        done = tap.on_body(message)
                except Exception:
                    trouble()
            await send(message)  # first the client's bytes, then our bookkeeping
            if done and not broken:
                await self._publish(tap)

        try:
            await self.app(scope, tapped_receive, tapped_send)
        except BaseException as exc:
            if not broken and not tap.finished:
                await self._publish(tap, "error", exc)
            raise
        if not broken and not tap.finished:
            # the app returned before the body ended (a client that went away): the call was aborted
            await self._publish(tap, "aborted")

    async def _publish(self, tap: _Tap, status: str | None = None, error: BaseException | None = None) -> None:
        try:
            event = tap.finish(status, error)
            if event is not None and tap.call is not None:
                await tap.call.emit_async(event)
        except Exception:
            logger.exception("usagebill: usage middleware could not record %s", tap.scope.get("path"))
