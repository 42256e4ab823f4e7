"""Capture one usage event per LLM call from SDK streams and responses, sync and async, chunks untouched.

`instrument(client)` wraps an `openai.OpenAI`/`AsyncOpenAI` or `anthropic.Anthropic`/`AsyncAnthropic`
client: its `chat.completions.create`, `responses.create`, `messages.create` and `messages.stream`
return what the SDK returns (the same chunk objects, in the same order), and each call publishes
exactly one event when it completes (`ok`), fails (`error`) or is abandoned (`aborted`: closed
early, left by `break` out of a `with`, or garbage collected). `track_stream()` and
`track_response()` do the same for a stream or response the app already holds.

Per chunk the wrapper does almost nothing: it keeps a reference to the chunk and hands only the
chunks that carry usage (or the model name) to `UsageAccumulator`. Only when the provider reported
no usage are the kept chunks read for their text, to count tokens offline (`estimated: true`).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, Self

from producer.build import build_event
from producer.context import CallContext, current_context
from producer.errors import InvalidEventError
from producer.tokens import count_prompt, count_text, encoding_name_for

if TYPE_CHECKING:
    from producer.event import UsageEvent
    from producer.extract import UsageAccumulator
    from producer.usage import Usage

logger = logging.getLogger("usagebill.producer")

#: what receives each finished call's event; the default is the process's publisher (never raises)
Publish = Callable[["UsageEvent"], Any]

#: stream events (Responses API, Anthropic) that carry usage or the model name
USAGE_EVENT_TYPES = frozenset(
    {
        "response.created",
        "response.completed",
        "response.incomplete",
        "response.failed",
        "message_start",
        "message_delta",
    }
)
#: the context keys accepted as keyword arguments of `instrument`, `track_stream` and the `usagebill=` call option
CONTEXT_KEYS = ("org_id", "user_id", "session_id", "request_type", "tags", "reservation_id")


def _get(obj: Any, key: str) -> Any:
    """A field of an SDK object or a dict (None when absent)."""
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def default_publish(event: UsageEvent) -> None:
    """Hand the event to the process's publisher (imported lazily: it pulls in redis and rq)."""
    from producer.publisher import emit  # noqa: PLC0415

    emit(event)


async def default_publish_async(event: UsageEvent) -> None:
    """The async-safe default: no Redis I/O on the event loop."""
    from producer.publisher import publish_async  # noqa: PLC0415

    await publish_async(event)


def _accumulator(provider: str | None) -> UsageAccumulator:
    from producer.extract import UsageAccumulator  # noqa: PLC0415

    return UsageAccumulator(provider)


def _extract(payload: Any, provider: str | None) -> Usage | None:
    from producer.extract import extract_usage  # noqa: PLC0415

    return extract_usage(payload, provider)


# -- text of chunks and responses, read only to estimate when no usage was reported ---------------------------


def chunk_text(chunk: Any) -> str:
    """The generated text a stream chunk/event carries (chat delta, Responses delta, Anthropic delta, or a
    provider's native chunk: Gemini, Ollama, Bedrock ConverseStream, Hunyuan).

    A chunk may also be the JSON text of an SSE `data:` line (kept unparsed by `producer.sse`)."""
    if isinstance(chunk, str | bytes):
        if chunk[:5] in ("data:", b"data:"):
            chunk = chunk[5:]
        try:
            chunk = json.loads(chunk)
        except ValueError:
            return ""
    else:
        chunk = unwrap(chunk)
    kind = _get(chunk, "type")
    if kind is None:  # an OpenAI chat chunk, or a native shape (no choices)
        parts: list[str] = []
        choices = _get(chunk, "choices")
        if choices is None:
            _native_text(chunk, parts)
        for choice in choices or ():
            delta = _get(choice, "delta")
            if delta is None:
                continue
            for key in ("content", "reasoning_content", "reasoning", "refusal"):
                value = _get(delta, key)
                if isinstance(value, str):
                    parts.append(value)
            for call in _get(delta, "tool_calls") or ():
                fn = _get(call, "function")
                for key in ("name", "arguments"):
                    value = _get(fn, key) if fn is not None else None
                    if isinstance(value, str):
                        parts.append(value)
        return "".join(parts)
    if kind == "content_block_delta":
        delta = _get(chunk, "delta")
        for key in ("text", "partial_json", "thinking"):
            value = _get(delta, key)
            if isinstance(value, str):
                return value
        return ""
    if isinstance(kind, str) and kind.endswith(".delta") and kind.startswith("response."):
        value = _get(chunk, "delta")
        return value if isinstance(value, str) else ""
    return ""


def _strings(parts: list[str], *values: Any) -> None:
    parts.extend(value for value in values if isinstance(value, str))


def _native_text(obj: Any, parts: list[str]) -> None:
    """The text of a chunk or response in a provider's native shape: Gemini, Ollama, Bedrock Converse, Hunyuan.

    Without it an estimate for such a stream would count 0 output tokens however much it had generated."""
    for candidate in _get(obj, "candidates") or ():  # Gemini / Vertex: thought parts are billed as output too
        content = _get(candidate, "content")
        for part in (_get(content, "parts") if content is not None else None) or ():
            _strings(parts, _get(part, "text"))
    message = _get(obj, "message")  # Ollama /api/chat
    if message is not None:
        _strings(parts, _get(message, "thinking"), _get(message, "content"))
    _strings(parts, _get(obj, "thinking"), _get(obj, "response"))  # Ollama /api/generate (a string there)
    block = _get(obj, "contentBlockDelta")  # Bedrock ConverseStream
    delta = _get(block, "delta") if block is not None else None
    if delta is not None:
        reasoning = _get(delta, "reasoningContent")
        tool = _get(delta, "toolUse")
        _strings(
            parts,
            _get(delta, "text"),
            _get(reasoning, "text") if reasoning is not None else None,
            _get(tool, "input") if tool is not None else None,
        )
    output = _get(obj, "output")  # Bedrock Converse (a whole response)
    message = _get(output, "message") if isinstance(output, Mapping) else None
    for block in (_get(message, "content") if message is not None else None) or ():
        _strings(parts, _get(block, "text"))
    wrapper = _get(obj, "Response")  # Hunyuan: Choices[].Delta in a stream, Response.Choices[].Message
    for choice in _get(wrapper if wrapper is not None else obj, "Choices") or ():
        for key in ("Delta", "Message"):
            value = _get(choice, key)
            if value is not None:
                _strings(parts, _get(value, "ReasoningContent"), _get(value, "Content"))


def response_text(response: Any) -> str:
    """The generated text of a whole (non-streamed) response of any of the three APIs."""
    parts: list[str] = []
    for choice in _get(response, "choices") or ():  # chat completion
        message = _get(choice, "message")
        value = _get(message, "content") if message is not None else None
        if isinstance(value, str):
            parts.append(value)
    for block in _get(response, "content") or ():  # Anthropic message
        for key in ("text", "thinking"):
            value = _get(block, key)
            if isinstance(value, str):
                parts.append(value)
    for item in _get(response, "output") or ():  # Responses API
        for part in _get(item, "content") or ():
            value = _get(part, "text")
            if isinstance(value, str):
                parts.append(value)
    if _get(response, "choices") is None:
        _native_text(response, parts)
    return "".join(parts)


# -- one call -------------------------------------------------------------------------------------------------


class _Call:
    """The state of one LLM call, from request to its one event."""

    __slots__ = (
        "_done",
        "acc",
        "chunks",
        "context",
        "first",
        "hide_usage_chunk",
        "provider",
        "publish",
        "request",
        "request_model",
        "started",
        "tags",
    )

    def __init__(
        self,
        *,
        provider: str,
        request: Mapping[str, Any],
        context: CallContext,
        publish: Publish | None,
        tags: Mapping[str, str] | None = None,
        hide_usage_chunk: bool = False,
        started: float | None = None,
    ) -> None:
        if not context.org_id:
            # fail before the paid call, not after it: an event without an org can never be billed
            raise InvalidEventError("no org_id: pass org_id= or call inside producer.billing_context(org_id=...)")
        self.provider = provider
        self.request = request
        model = request.get("model")
        self.request_model = model if isinstance(model, str) else None
        self.context = context
        self.publish = publish
        self.tags = dict(tags or {})
        self.hide_usage_chunk = hide_usage_chunk
        self.started = time.perf_counter() if started is None else started
        self.chunks: list[Any] = []
        self.acc: UsageAccumulator | None = None
        self.first = True
        self._done = threading.Lock()  # acquired once: the one event of this call

    def observe(self, chunk: Any) -> None:
        """Feed a chunk that carries usage or the model to the accumulator (never raises)."""
        try:
            if self.acc is None:
                self.acc = _accumulator(self.provider)
            self.acc.add(unwrap(chunk))
        except Exception:
            logger.exception("usagebill: could not read usage from a %s chunk", self.provider)

    def finish(
        self, status: str, *, error: BaseException | None = None, response: Any = None, text: str | None = None
    ) -> UsageEvent | None:
        """Build this call's event, once: later calls (a close after the end, a GC'd finished stream) get None."""
        if not self._done.acquire(blocking=False):
            return None
        try:
            return self._build(status, error=error, response=response, text=text)
        except Exception:
            logger.exception("usagebill: could not build the usage event of a %s call", self.provider)
            return None

    @property
    def done(self) -> bool:
        return self._done.locked()

    def _build(self, status: str, *, error: BaseException | None, response: Any, text: str | None) -> UsageEvent:
        latency_ms = int((time.perf_counter() - self.started) * 1000)
        tags = dict(self.tags)
        usage: Usage | None = None
        model = self.request_model
        tier: str | None = None
        if response is not None:
            self.acc = None
            self.observe(response)
        if self.acc is not None:
            usage = self.acc.usage
            model = _str(getattr(self.acc, "model", None)) or model
            tier = _str(getattr(self.acc, "service_tier", None))
        estimated = False
        if usage is None:
            usage, estimated = self._estimate(status, response=response, text=text, model=model, tags=tags)
        if error is not None:
            tags["usagebill.error"] = type(error).__name__
        return build_event(
            provider=self.provider,
            model=model or "unknown",
            usage=usage,
            status=status,
            estimated=estimated,
            latency_ms=latency_ms,
            service_tier=tier,
            context=self.context,
            tags=tags,
        )

    def _estimate(
        self,
        status: str,
        *,
        response: Any,
        text: str | None,
        model: str | None,
        tags: dict[str, str],
    ) -> tuple[Usage, bool]:
        from producer.usage import Usage  # noqa: PLC0415

        if status == "error" and response is None and not self.chunks and text is None:
            # the request itself failed (refused, rate limited, unreachable): nothing was generated or billed
            return Usage(input_tokens=0, output_tokens=0), False
        if text is None:
            text = response_text(response) if response is not None else "".join(chunk_text(c) for c in self.chunks)
        count_model = model or self.request_model
        tags["usagebill.estimate_encoding"] = encoding_name_for(count_model)
        return (
            Usage(input_tokens=count_prompt(self.request, count_model), output_tokens=count_text(text, count_model)),
            True,
        )

    def emit(self, event: UsageEvent | None) -> None:
        if event is None:
            return
        try:
            (default_publish if self.publish is None else self.publish)(event)
        except Exception:
            logger.exception("usagebill: publishing a usage event failed")

    async def emit_async(self, event: UsageEvent | None) -> None:
        if event is None:
            return
        try:
            if self.publish is None:
                await default_publish_async(event)
            else:
                result = self.publish(event)
                if inspect.isawaitable(result):
                    await result
        except Exception:
            logger.exception("usagebill: publishing a usage event failed")

    def abandon(self) -> None:
        """GC or interpreter exit reached a stream that was never finished: it was aborted."""
        event = self.finish("aborted")
        if event is None:
            return
        if self.publish is None:
            default_publish(event)
            return
        try:
            result = self.publish(event)
            if inspect.iscoroutine(result):
                result.close()  # no loop to run it from a finalizer; the default publisher is used instead
                default_publish(event)
        except Exception:
            logger.exception("usagebill: publishing a usage event failed")


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


#: keys besides `usage` under which a non-OpenAI-shaped chunk (a mapping or an SDK object) may carry usage:
#: Gemini `usageMetadata` (`usage_metadata` in google-genai), Hunyuan `Usage` (also inside `Response`),
#: Ollama's final object (either count may be omitted: Ollama drops zero counts), Bedrock's stream
#: `metadata`, Groq's `x_groq`
OTHER_USAGE_KEYS = frozenset(
    {"x_groq", "usageMetadata", "usage_metadata", "Usage", "Response", "eval_count", "prompt_eval_count", "metadata"}
)


def _mapping_has_usage(chunk: Mapping[str, Any]) -> bool:
    if chunk.get("usage") is not None:
        return True
    choices: Any = chunk.get("choices")
    if choices is not None:
        # OpenAI-compatible: usage outside `usage` (Groq x_groq.usage, Moonshot choices[0].usage) rides on
        # the finish chunk or on a chunk without choices; the content chunks in between carry none
        return not choices or not isinstance(choices[0], Mapping) or choices[0].get("finish_reason") is not None
    return not OTHER_USAGE_KEYS.isdisjoint(chunk.keys())


def _chat_object_has_usage(chunk: Any) -> bool:
    # an SDK chat chunk: top-level usage, or (kept by the SDK as extras) Groq's x_groq.usage and Moonshot's
    # choices[0].usage, which ride on the finish chunk or on a chunk without choices
    if chunk.usage is not None:
        return True
    choices = chunk.choices
    return not choices or choices[0].finish_reason is not None


def _wants(chunk: Any, call: _Call) -> bool:
    """Whether a chunk carries usage or the model name: the only ones the accumulator sees."""
    if call.first:
        call.first = False
        return True
    if type(chunk) is dict or isinstance(chunk, Mapping):
        kind = chunk.get("type")
        return kind in USAGE_EVENT_TYPES if kind is not None else _mapping_has_usage(chunk)
    kind = getattr(chunk, "type", None)
    if kind is not None:
        return kind in USAGE_EVENT_TYPES
    if getattr(chunk, "usage", None) is not None:
        return True
    if hasattr(chunk, "choices"):
        return _chat_object_has_usage(chunk)
    # other SDKs' objects: google-genai's cumulative usage_metadata on every chunk, the ollama library's
    # counts on its done object, ...: without this only the first chunk's (partial) usage would be read
    if any(getattr(chunk, key, None) is not None for key in OTHER_USAGE_KEYS):
        return True
    inner = unwrap(chunk)
    return inner is not chunk and _wants(inner, call)


def unwrap(chunk: Any) -> Any:
    """The chunk inside an SDK event that wraps one, else the chunk itself: the mistralai SDK's streams
    yield `CompletionEvent(data=CompletionChunk)`, whose usage (on the finish chunk) sits one level down."""
    if isinstance(chunk, Mapping | str | bytes) or getattr(chunk, "type", None) is not None:
        return chunk
    # a stored field only (pydantic models and plain objects keep theirs in __dict__): a `data` property
    # may compute something (google-genai's LiveServerMessage.data joins every audio part and warns)
    data = getattr(chunk, "__dict__", {}).get("data")
    if data is not None and (getattr(data, "choices", None) is not None or getattr(data, "usage", None) is not None):
        return data
    return chunk


def _chat_wants(chunk: Any, call: _Call) -> bool:
    # OpenAI-compatible chat chunks: the first (for the model) and those that can carry usage
    if call.first:
        call.first = False
        return True
    return _chat_object_has_usage(chunk)


def _event_wants(chunk: Any, call: _Call) -> bool:
    # Responses API and Anthropic stream events: selected by their type
    return chunk.type in USAGE_EVENT_TYPES


def _is_injected_usage_chunk(chunk: Any) -> bool:
    # the usage-only chunk that include_usage adds (no choices): hidden from an app that did not ask for it
    return not _get(chunk, "choices") and _get(chunk, "usage") is not None


# -- streams --------------------------------------------------------------------------------------------------


def _pump(it: Iterator[Any], call: _Call, wants: Callable[[Any, _Call], bool]) -> Generator[Any, None, None]:
    """Yield each chunk unchanged; hand the usage-bearing ones to the call; end it with ok or error."""
    append = call.chunks.append
    try:
        for chunk in it:
            append(chunk)
            if wants(chunk, call):
                call.observe(chunk)
                if call.hide_usage_chunk and _is_injected_usage_chunk(chunk):
                    continue
            yield chunk
    except GeneratorExit:
        raise  # closed or collected: TrackedStream.close / the finalizer record it as aborted
    except BaseException as exc:
        call.emit(call.finish("error", error=exc))
        raise
    call.emit(call.finish(end_status(call.chunks)))


#: stream event types that mean the call failed (Anthropic's `error`, OpenAI Responses' `response.failed`)
EVENT_ERRORS = frozenset({"error", "response.failed"})


def is_error_event(payload: Any) -> bool:
    """A stream chunk (dict or SDK event) that reports the call's failure instead of raising it."""
    if isinstance(payload, Mapping):
        return payload.get("type") in EVENT_ERRORS or isinstance(payload.get("error"), Mapping | str)
    return getattr(payload, "type", None) in EVENT_ERRORS


def end_status(chunks: list[Any]) -> str:
    """How a stream that ran to its end ended: `error` when one of its chunks was an error event."""
    return "error" if any(is_error_event(c) for c in chunks) else "ok"


def _pump_chat(it: Iterator[Any], call: _Call) -> Generator[Any, None, None]:
    """`_pump` specialized for OpenAI chat chunks, the hot case: one attribute test per chunk."""
    append = call.chunks.append
    observe = call.observe
    hide = call.hide_usage_chunk
    first = True
    try:
        for chunk in it:
            append(chunk)
            if first or chunk.usage is not None or not (ch := chunk.choices) or ch[0].finish_reason is not None:
                first = False
                observe(chunk)
                if hide and chunk.usage is not None and not chunk.choices:
                    continue
            yield chunk
    except GeneratorExit:
        raise
    except BaseException as exc:
        call.emit(call.finish("error", error=exc))
        raise
    call.emit(call.finish("ok"))


class TrackedIterator:
    """What every sync wrapper shares: chunks flow through `_gen` (a generator: cheaper per chunk than a
    `__next__` method); closing early records the call as aborted, once; the source is closed too.

    The abandonment finalizer is tied to that generator, which `for` loops hold, so a wrapper object
    dropped while its chunks are still being read is not mistaken for an abandoned one.
    """

    _source: Any
    _call: _Call
    _gen: Generator[Any, None, None]

    def _start(self, source: Any, call: _Call, gen: Generator[Any, None, None]) -> None:
        self._source = source
        self._call = call
        self._gen = gen
        self._finalizer = weakref.finalize(gen, call.abandon)

    def __iter__(self) -> Iterator[Any]:
        return self._gen

    def __next__(self) -> Any:
        return next(self._gen)

    def close(self) -> None:
        """Stop reading: the call is recorded as aborted unless it had already ended."""
        if not self._call.done:
            self._call.emit(self._call.finish("aborted"))
        self._gen.close()
        close = getattr(self._source, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TrackedStream(TrackedIterator):
    """A sync stream that yields the SDK's chunks unchanged and publishes the call's one event."""

    def __init__(self, stream: Any, call: _Call, wants: Callable[[Any, _Call], bool] = _wants) -> None:
        it = iter(stream)
        self._start(stream, call, _pump_chat(it, call) if wants is _chat_wants else _pump(it, call, wants))

    def __getattr__(self, name: str) -> Any:
        # everything else (response, get_final_completion, ...) is the SDK stream's own
        return getattr(self._source, name)


class AsyncTrackedIterator:
    """What every async wrapper shares: ending the call once (ok, error or aborted), closing the source
    (its `aclose`, else its `close`), and the async iterator and context-manager protocols."""

    _source: Any
    _call: _Call
    _finalizer: weakref.finalize[Any, Any]

    def _start(self, source: Any, call: _Call) -> None:
        self._source = source
        self._call = call
        # tied to the wrapper: an async for loop holds the wrapper itself
        self._finalizer = weakref.finalize(self, call.abandon)

    def __aiter__(self) -> Self:
        return self

    async def _end(self, status: str, error: BaseException | None = None) -> None:
        self._finalizer.detach()
        await self._call.emit_async(self._call.finish(status, error=error))

    async def aclose(self) -> None:
        """Stop reading: the call is recorded as aborted unless it had already ended."""
        if not self._call.done:
            await self._end("aborted")
        for name in ("aclose", "close"):
            close = getattr(self._source, name, None)
            if callable(close):
                result = close()
                if inspect.isawaitable(result):
                    await result
                return

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncTrackedStream(AsyncTrackedIterator):
    """An async stream that yields the SDK's chunks unchanged and publishes the call's one event."""

    def __init__(self, stream: Any, call: _Call, wants: Callable[[Any, _Call], bool] = _wants) -> None:
        self._it: AsyncIterator[Any] = stream.__aiter__()
        self._wants = wants
        self._chunks_append = call.chunks.append
        self._start(stream, call)

    async def __anext__(self) -> Any:
        try:
            chunk = await self._it.__anext__()
        except StopAsyncIteration:
            await self._end(end_status(self._call.chunks))
            raise
        except BaseException as exc:
            await self._end("aborted" if _is_cancel(exc) else "error", exc)
            raise
        self._chunks_append(chunk)
        if self._wants(chunk, self._call):
            self._call.observe(chunk)
            if self._call.hide_usage_chunk and _is_injected_usage_chunk(chunk):
                return await self.__anext__()
        return chunk

    async def close(self) -> None:
        """The SDKs' name for `aclose()`."""
        await self.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._source, name)


def _is_cancel(exc: BaseException) -> bool:
    # a cancelled task or a closed generator means the consumer left: aborted, not a provider failure
    import asyncio  # noqa: PLC0415

    return isinstance(exc, asyncio.CancelledError | GeneratorExit)


# -- anthropic messages.stream() / openai *.stream() helpers --------------------------------------------------


def _snapshot(stream: Any) -> Any:
    # openai's ResponseStream exposes its completed response only on its state object (no public property)
    state = getattr(stream, "_state", None)
    completed = getattr(state, "_completed_response", None) if state is not None else None
    if completed is not None:
        return completed
    for name in ("current_message_snapshot", "current_completion_snapshot", "current_snapshot"):
        # the SDK asserts a snapshot exists: there is none before the first event
        with contextlib.suppress(Exception):
            value = getattr(stream, name)
            if value is not None:
                return value
    return None


def _finished(snapshot: Any) -> bool:
    if snapshot is None:
        return False
    if _get(snapshot, "stop_reason") is not None:
        return True
    status = _get(snapshot, "status")
    if status in ("completed", "incomplete"):
        return True
    return any(_get(c, "finish_reason") is not None for c in (_get(snapshot, "choices") or ()))


def _manager_event(call: _Call, stream: Any, exc: BaseException | None) -> UsageEvent | None:
    snapshot = _snapshot(stream) if stream is not None else None
    if exc is not None and not _finished(snapshot) and _is_api_error(exc):
        status = "error"
    else:
        status = "ok" if _finished(snapshot) else "aborted"
    if snapshot is not None and _extract(snapshot, call.provider) is not None:
        return call.finish(status, error=exc if status == "error" else None, response=snapshot)
    text = response_text(snapshot) if snapshot is not None else ""
    return call.finish(status, error=exc if status == "error" else None, text=text)


def _is_api_error(exc: BaseException) -> bool:
    # the SDKs' own errors (APIError, APIConnectionError, ...) mean the call failed; anything else is the app's
    module = type(exc).__module__.split(".", 1)[0]
    return module in ("openai", "anthropic", "httpx", "httpcore")


class TrackedStreamManager:
    """Wraps `messages.stream(...)` (and the OpenAI `.stream(...)` helpers): the SDK's own stream object
    is returned by `with`; the event is published when the block exits, from the stream's snapshot."""

    def __init__(self, manager: Any, call: _Call) -> None:
        self._manager = manager
        self._call = call
        self._stream: Any = None

    def __enter__(self) -> Any:
        try:
            self._stream = self._manager.__enter__()
        except BaseException as exc:
            self._call.emit(self._call.finish("error", error=exc))
            raise
        return self._stream

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Any:
        try:
            self._call.emit(_manager_event(self._call, self._stream, exc))
        finally:
            result = self._manager.__exit__(exc_type, exc, tb)
        return result

    async def __aenter__(self) -> Any:
        try:
            self._stream = await self._manager.__aenter__()
        except BaseException as exc:
            await self._call.emit_async(self._call.finish("error", error=exc))
            raise
        return self._stream

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Any:
        try:
            await self._call.emit_async(_manager_event(self._call, self._stream, exc))
        finally:
            result = await self._manager.__aexit__(exc_type, exc, tb)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manager, name)


# -- public helpers for streams and responses the app already holds ------------------------------------------


def _context(explicit: Mapping[str, Any]) -> CallContext:
    return current_context().merged(**{k: v for k, v in explicit.items() if k in CONTEXT_KEYS})


def new_call(
    provider: str,
    *,
    model: str | None,
    request: Mapping[str, Any] | None,
    publish: Publish | None,
    started: float | None,
    context: Mapping[str, Any],
) -> _Call:
    """The call of a stream, response or SSE body the app already holds: what `track_*` wrap."""
    req = dict(request or {})
    if model is not None:
        req["model"] = model
    return _Call(provider=provider, request=req, context=_context(context), publish=publish, started=started)


def track_stream(
    stream: Any,
    *,
    provider: str,
    model: str | None = None,
    request: Mapping[str, Any] | None = None,
    publish: Publish | None = None,
    started: float | None = None,
    **context: Any,
) -> Any:
    """Wrap a stream the app already holds (an SDK stream or any iterator of chunks, sync or async).

    `request` is the call's keyword arguments (for the model and, without usage, the prompt estimate);
    `started` is the `time.perf_counter()` of the request, for latency. Context keyword arguments
    (org_id, user_id, ...) override the `billing_context` in force.
    """
    call = new_call(provider, model=model, request=request, publish=publish, started=started, context=context)
    if hasattr(stream, "__aiter__"):
        return AsyncTrackedStream(stream, call)
    return TrackedStream(stream, call)


def track_response(
    response: Any,
    *,
    provider: str,
    model: str | None = None,
    request: Mapping[str, Any] | None = None,
    publish: Publish | None = None,
    started: float | None = None,
    **context: Any,
) -> Any:
    """Publish the event of a whole (non-streamed) response and return the response unchanged."""
    call = new_call(provider, model=model, request=request, publish=publish, started=started, context=context)
    call.emit(call.finish("ok", response=response))
    return response


# -- instrument(client) ---------------------------------------------------------------------------------------

_ENDPOINTS: dict[tuple[str, ...], str] = {
    ("chat", "completions", "create"): "chat",
    ("responses", "create"): "responses",
    ("messages", "create"): "messages",
    ("messages", "stream"): "messages.stream",
    ("chat", "completions", "stream"): "chat.stream",
    ("responses", "stream"): "responses.stream",
    ("beta", "chat", "completions", "stream"): "chat.stream",
}
_PREFIXES = {path[:i] for path in _ENDPOINTS for i in range(1, len(path))}
_CLIENT_COPIERS = frozenset({"with_options", "copy"})


#: an OpenAI-compatible client's host -> the provider it serves (its usage rules and its rates follow it)
_HOSTS: Final[tuple[tuple[str, str], ...]] = (
    ("openrouter.ai", "openrouter"),
    ("api.x.ai", "xai"),
    ("api.deepseek.com", "deepseek"),
    ("dashscope", "qwen"),  # dashscope.aliyuncs.com, dashscope-intl.aliyuncs.com
    ("api.moonshot", "moonshot"),  # api.moonshot.ai, api.moonshot.cn
    ("hunyuan", "hunyuan"),  # api.hunyuan.cloud.tencent.com
    ("generativelanguage.googleapis.com", "gemini"),
    ("aiplatform.googleapis.com", "vertex"),
    ("api.groq.com", "groq"),
    ("api.mistral.ai", "mistral"),
    ("api.perplexity.ai", "perplexity"),
    ("bigmodel.cn", "zai"),
    ("api.z.ai", "zai"),
    ("router.huggingface.co", "huggingface"),
)


def infer_provider(client: Any) -> str:
    """`anthropic` for an Anthropic client; for an OpenAI client, the provider its base URL's host serves
    (OpenRouter, xAI, DeepSeek, DashScope/Qwen, Moonshot, Hunyuan, Gemini, ...); else `openai`."""
    module = type(client).__module__
    if module.startswith("anthropic"):
        return "anthropic"
    base_url = str(getattr(client, "base_url", "") or "").lower()
    for host, provider in _HOSTS:
        if host in base_url:
            return provider
    return "openai"


class Instrumented:
    """A proxy over an SDK client (or one of its resources) whose LLM calls publish usage events."""

    def __init__(
        self,
        target: Any,
        *,
        provider: str,
        publish: Publish | None,
        context: Mapping[str, Any],
        path: tuple[str, ...] = (),
    ) -> None:
        self._target = target
        self._provider = provider
        self._publish = publish
        self._context = dict(context)
        self._path = path

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        path = (*self._path, name)
        endpoint = _ENDPOINTS.get(path)
        if endpoint is not None and callable(attr):
            return self._wrap_call(attr, endpoint)
        if path in _PREFIXES:
            return Instrumented(attr, provider=self._provider, publish=self._publish, context=self._context, path=path)
        if not self._path and name in _CLIENT_COPIERS and callable(attr):

            def copier(*args: Any, **kwargs: Any) -> Instrumented:
                return Instrumented(
                    attr(*args, **kwargs), provider=self._provider, publish=self._publish, context=self._context
                )

            return copier
        return attr

    def __repr__(self) -> str:
        return f"<usagebill instrumented {self._target!r} provider={self._provider}>"

    def _wrap_call(self, method: Callable[..., Any], endpoint: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            explicit = kwargs.pop("usagebill", None) or {}
            ctx = _context({**self._context, **dict(explicit)})
            hide = _prepare(endpoint, self._provider, kwargs)
            state = _Call(
                provider=self._provider, request=kwargs, context=ctx, publish=self._publish, hide_usage_chunk=hide
            )
            try:
                result = method(*args, **kwargs)
            except BaseException as exc:
                state.emit(state.finish("error", error=exc))
                raise
            if endpoint.endswith(".stream"):
                return TrackedStreamManager(result, state)
            if inspect.isawaitable(result):
                return _await_result(result, state, endpoint)
            return _wrap_result(result, state, endpoint)

        call.__wrapped__ = method  # type: ignore[attr-defined]
        call.__doc__ = method.__doc__
        return call


def _prepare(endpoint: str, provider: str, kwargs: dict[str, Any]) -> bool:
    """Ask for usage where the API needs asking. Returns whether the usage chunk is ours to hide."""
    hide = False
    if (endpoint == "chat" and kwargs.get("stream")) or endpoint == "chat.stream":
        options = kwargs.get("stream_options")
        if not isinstance(options, Mapping) or "include_usage" not in options:
            kwargs["stream_options"] = {**(options or {}), "include_usage": True}
            hide = endpoint == "chat"  # the .stream() helper already skips chunks without choices
    if provider == "openrouter" and endpoint in ("chat", "chat.stream", "responses", "responses.stream"):
        # OpenRouter's usage accounting: the call's cost comes back in usage.cost
        extra = dict(kwargs.get("extra_body") or {})
        usage_opt = extra.get("usage")
        extra["usage"] = {**(usage_opt if isinstance(usage_opt, Mapping) else {}), "include": True}
        kwargs["extra_body"] = extra
    return hide


def _select(endpoint: str) -> Callable[[Any, _Call], bool]:
    if endpoint == "chat":
        return _chat_wants
    if endpoint in ("responses", "messages"):
        return _event_wants
    return _wants


def _is_stream(result: Any) -> bool:
    return hasattr(result, "__iter__") and hasattr(result, "response") and not hasattr(result, "model_dump")


def _wrap_result(result: Any, call: _Call, endpoint: str) -> Any:
    if _is_stream(result):
        return TrackedStream(result, call, _select(endpoint))
    call.emit(call.finish("ok", response=result))
    return result


async def _await_result(awaitable: Awaitable[Any], call: _Call, endpoint: str) -> Any:
    try:
        result = await awaitable
    except BaseException as exc:
        await call.emit_async(call.finish("aborted" if _is_cancel(exc) else "error", error=exc))
        raise
    if hasattr(result, "__aiter__") and not hasattr(result, "model_dump"):
        return AsyncTrackedStream(result, call, _select(endpoint))
    await call.emit_async(call.finish("ok", response=result))
    return result


def instrument(client: Any, *, provider: str | None = None, publish: Publish | None = None, **context: Any) -> Any:
    """Wrap an OpenAI or Anthropic client (sync or async) so each LLM call publishes one usage event.

    >>> client = producer.instrument(openai.OpenAI(), org_id="acme")
    >>> for chunk in client.chat.completions.create(model="gpt-4o-mini", messages=msgs, stream=True): ...

    `provider` defaults to `infer_provider(client)`; context keyword arguments (org_id, user_id,
    session_id, request_type, tags) apply to every call, over the `billing_context` in force, and a
    call may add its own with `usagebill={"user_id": ...}` (removed before the SDK sees it).
    """
    unknown = set(context) - set(CONTEXT_KEYS)
    if unknown:
        raise TypeError(f"instrument() got unexpected keyword arguments {sorted(unknown)}")
    return Instrumented(client, provider=provider or infer_provider(client), publish=publish, context=context)
