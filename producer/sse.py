"""Capture usage from raw server-sent-event lines (httpx `iter_lines()`, aiohttp content), lines untouched.

`track_sse_lines(lines, provider=..., model=..., org_id=...)` yields every line exactly as it came
(str or bytes, with or without its newline) and publishes the call's one event: `ok` at the end,
`error` if reading fails or the stream sends an error event, `aborted` if it is closed or dropped
early. Only `data:` lines that can carry usage (those mentioning "usage", the first one for the
model) are parsed; `[DONE]` is ignored and `event:` names are kept for Anthropic-style streams.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Generator, Iterator, Mapping
from typing import Any

from producer.streams import (
    EVENT_ERRORS,
    AsyncTrackedIterator,
    Publish,
    TrackedIterator,
    _Call,
    _is_cancel,
    is_error_event,
    new_call,
)

logger = logging.getLogger("usagebill.producer")


class SSEParser:
    """Reads decoded SSE lines into a call: usage-bearing `data:` payloads go to its accumulator."""

    __slots__ = ("call", "error", "event", "seen_data")

    def __init__(self, call: _Call) -> None:
        self.call = call
        self.event: str | None = None
        self.error = False
        self.seen_data = False

    def feed(self, line: str) -> None:
        """One line without its line ending. Never raises."""
        if line[:5] == "data:":
            # one scan of the line decides; only lines that can carry usage (or name the model) are parsed
            if (
                not self.seen_data
                or _has_usage(line)
                or line[5:15].lstrip().startswith('{"error"')
                or self.event in EVENT_ERRORS
            ):
                data = line[5:].strip()
                if data and data != "[DONE]":
                    self.seen_data = True
                    self.call.chunks.append(data)
                    self._parse(data)
            elif not line.endswith("[DONE]"):
                self.call.chunks.append(line)  # read again (JSON after "data:") only to estimate, if no usage comes
        elif line[:6] == "event:":
            self.event = line[6:].strip() or None
        elif not line:
            self.event = None  # a blank line ends the event

    def _parse(self, data: str) -> None:
        try:
            payload = json.loads(data)
        except ValueError:
            return
        if not isinstance(payload, dict):
            return
        if self.event and "type" not in payload:
            payload["type"] = self.event  # an Anthropic-style event whose name is only on the event: line
        if is_error_event(payload):
            self.error = True
        self.call.observe(payload)

    def status(self) -> str:
        return "error" if self.error else "ok"


def _has_usage(data: str) -> bool:
    # One substring search finds (nearly) every place a data line carries usage: `usage` (OpenAI-style, also inside
    # Groq's x_groq and Moonshot's choices[0]), Gemini's `usageMetadata`, Hunyuan's `Usage`. Streams that
    # asked for usage send `"usage": null` on every chunk: only a non-null value counts.
    i = data.find("sage")
    while i >= 0:
        if data[i - 1 : i] in ("u", "U"):
            tail = data[i + 4 : i + 14]
            if tail[:1] != '"' or tail[1:].lstrip(" :")[:4] != "null":
                return True
        i = data.find("sage", i + 4)
    # Ollama's native final object, when its lines come this way (either count may be omitted when zero)
    return 'eval_count"' in data


def _decode(line: str | bytes) -> str | None:
    # only data:, event: and blank lines matter; bytes are decoded for those alone
    if isinstance(line, bytes):
        if line[:5] != b"data:" and line[:6] != b"event:" and line.strip():
            return None
        line = line.decode("utf-8", "replace")
    return line.rstrip("\r\n")


def _pump_lines(it: Iterator[str | bytes], call: _Call, parser: SSEParser) -> Generator[str | bytes, None, None]:
    """Yield each line unchanged, feeding the ones that matter to the parser; end the call with its status."""
    feed = parser.feed
    try:
        for line in it:
            if type(line) is str:
                feed(line.rstrip("\r\n") if line.endswith(("\n", "\r")) else line)  # no copy for httpx lines
            else:
                text = _decode(line)
                if text is not None:
                    feed(text)
            yield line
    except GeneratorExit:
        raise  # closed or collected: recorded as aborted by close() or the finalizer
    except BaseException as exc:
        call.emit(call.finish("error", error=exc))
        raise
    call.emit(call.finish(parser.status()))


class TrackedLines(TrackedIterator):
    """A sync iterator of SSE lines that passes each line through and publishes the call's event."""

    def __init__(self, lines: Any, call: _Call) -> None:
        self._start(lines, call, _pump_lines(iter(lines), call, SSEParser(call)))


class AsyncTrackedLines(AsyncTrackedIterator):
    """An async iterator of SSE lines that passes each line through and publishes the call's event."""

    def __init__(self, lines: Any, call: _Call) -> None:
        self._it: AsyncIterator[str | bytes] = lines.__aiter__()
        self._parser = SSEParser(call)
        self._start(lines, call)

    async def __anext__(self) -> str | bytes:
        try:
            line = await self._it.__anext__()
        except StopAsyncIteration:
            await self._end(self._parser.status())
            raise
        except BaseException as exc:
            await self._end("aborted" if _is_cancel(exc) else "error", exc)
            raise
        text = _decode(line)
        if text is not None:
            self._parser.feed(text)
        return line


def track_sse_lines(
    lines: Any,
    *,
    provider: str,
    model: str | None = None,
    request: Mapping[str, Any] | None = None,
    publish: Publish | None = None,
    started: float | None = None,
    **context: Any,
) -> Any:
    """Wrap an iterator (or async iterator) of SSE lines; returns the same kind of iterator.

    >>> with httpx.stream("POST", url, json=body) as r:
    ...     for line in producer.track_sse_lines(r.iter_lines(), provider="openai", request=body, org_id="acme"):
    ...         ...

    `request` is the JSON body sent (its model, and its messages for an estimate if no usage comes).
    For an OpenAI-compatible API, ask for usage in the body: `stream_options={"include_usage": True}`.
    """
    call = new_call(provider, model=model, request=request, publish=publish, started=started, context=context)
    if hasattr(lines, "__aiter__"):
        return AsyncTrackedLines(lines, call)
    return TrackedLines(lines, call)
