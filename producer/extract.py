"""Find the usage an LLM provider reported in a response or a stream and normalize it to `Usage`.

Two layers, both small tables rather than an if-chain:

* **probes** locate usage in one response or chunk: the top-level key a provider puts it under
  (`usage`, `response.usage`, `message.usage`, `usageMetadata`, `x_groq.usage`, `choices[0].usage`,
  `Usage`, `metadata.usage`, Ollama's `eval_count`, ...). The first chunk's keys tell the API
  family, so only that family's few probes run on the rest of a stream.
* **shapes** parse the usage object found, recognized by its count keys (`prompt_tokens`,
  `input_tokens`, `inputTokens`, `PromptTokens`, `promptTokenCount`, `prompt_token_count`).

A provider hint (PROVIDERS: canonical ids and aliases) changes how counts are read where providers
disagree (xAI's completion_tokens exclude reasoning); it never narrows where usage is looked for.
An unknown hint is no hint. The mapping per provider is ../shared/provider-corpus/README.md. Extraction reports what the
provider said; the repair rule applies only when usage becomes an event. No usage is `None`,
never zeros. Payloads may be dicts (JSON, SSE data) or SDK objects (pydantic models of openai,
anthropic, google-genai, ...): those are read through their attribute dicts, never dumped.
Nothing here raises on an odd payload: an unrecognized shape yields `None`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import Enum
from typing import Any, Final

from pydantic import BaseModel

from producer.usage import Usage

__all__ = [
    "PROVIDERS",
    "UsageAccumulator",
    "canonical_provider",
    "extract_model",
    "extract_service_tier",
    "extract_usage",
]

_EMPTY: Final[Mapping[str, Any]] = {}
_XAI_TICKS_EXP: Final = -10  # xAI: 1 USD = 10^10 ticks


# --- reading dicts and SDK objects alike -------------------------------------------------------


_MAPPING, _MODEL, _OTHER = 1, 2, 3
_KINDS: dict[type, int] = {dict: _MAPPING}


def _kind(cls: type) -> int:
    kind = _KINDS.get(cls)
    if kind is None:
        # isinstance against ABCs (pydantic's metaclass is one) is slow: decide once per type.
        kind = _MODEL if issubclass(cls, BaseModel) else _MAPPING if issubclass(cls, Mapping) else _OTHER
        _KINDS[cls] = kind
    return kind


def _view(obj: Any) -> Mapping[str, Any] | None:
    """`obj` as a read-only mapping of its fields, or None when it is neither a mapping nor a model."""
    cls = type(obj)
    kind = _KINDS.get(cls) or _kind(cls)
    if kind == _MODEL:
        # pydantic v2 keeps declared fields in __dict__ and undeclared ones (openai/anthropic models
        # allow extras: x_groq, cost, prompt_cache_hit_tokens, ...) in __pydantic_extra__.
        extra = obj.__pydantic_extra__
        return {**obj.__dict__, **extra} if extra else obj.__dict__
    return obj if kind == _MAPPING else None


def _chunk_view(obj: Any) -> Mapping[str, Any] | None:
    """`_view` for the hot path: a model's extras (`obfuscation`, ...) are merged only when they matter."""
    cls = type(obj)
    if (_KINDS.get(cls) or _kind(cls)) == _MODEL:
        extra = obj.__pydantic_extra__
        if extra and not _CHUNK_KEYS.isdisjoint(extra):
            return {**obj.__dict__, **extra}
        return obj.__dict__  # type: ignore[no-any-return]
    return _view(obj)


def _m(obj: Any) -> Mapping[str, Any]:
    """Like `_view`, with an empty mapping for None and for anything that has no fields."""
    if type(obj) is dict:
        return obj
    if obj is None:
        return _EMPTY
    return _view(obj) or _EMPTY


def _int(value: Any) -> int | None:
    """A token count as reported, or None when absent or not a count (bool, text, fraction)."""
    cls = type(value)
    if cls is int:
        return value  # type: ignore[no-any-return]
    if cls is float and value.is_integer():
        return int(value)
    return None


def _first_int(*values: Any) -> int | None:
    for value in values:
        count = _int(value)
        if count is not None:
            return count
    return None


def _decimal(value: Any) -> Decimal | None:
    """A reported cost as an exact Decimal: a float keeps its JSON text (repr), never binary noise."""
    if value is None or isinstance(value, bool):
        return None
    try:
        if isinstance(value, float):
            result = Decimal(repr(value))
        elif isinstance(value, int | str | Decimal):
            result = Decimal(value)
        else:
            return None
    except InvalidOperation:
        return None
    return result if result.is_finite() else None


def _cost(u: Mapping[str, Any]) -> Decimal | None:
    """The cost the provider put in its usage, in USD: `cost` (OpenRouter, Avian), else xAI's ticks / 10^10.

    xAI reports ticks on its Responses API as well as on chat; either way they are the amount billed."""
    cost = _decimal(u.get("cost"))
    if cost is None:
        ticks = _int(u.get("cost_in_usd_ticks"))
        if ticks is not None:
            cost = Decimal(ticks).scaleb(_XAI_TICKS_EXP)
    return cost


def _text(value: Any) -> str | None:
    """A non-empty string (an enum's value too), else None."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, Enum):  # SDK models' enums (google-genai's TrafficType, ...)
        return _text(value.value)
    return None


def _tier(value: Any) -> str | None:
    # Bedrock reports {"type": "priority"}; everyone else a plain string.
    return _text(value) if type(value) is not dict else _text(value.get("type"))


# --- shapes: a usage object -> normalized counts -----------------------------------------------


@dataclass(frozen=True, slots=True)
class _Counts:
    input: int
    cached: int
    write: int
    write_1h: int
    output: int
    reasoning: int
    cost: Decimal | None

    def usage(self) -> Usage:
        return Usage(
            input_tokens=self.input,
            cached_input_tokens=self.cached,
            cache_write_tokens=self.write,
            cache_write_1h_tokens=self.write_1h,
            output_tokens=self.output,
            reasoning_tokens=self.reasoning,
            provider_cost=self.cost,
        )


#: a shape's parser: (usage mapping, first count, second count, xAI semantics) -> counts
_Shape = Callable[[Mapping[str, Any], "int | None", "int | None", bool], _Counts]


def _chat(u: Mapping[str, Any], prompt: int | None, completion: int | None, xai: bool) -> _Counts:
    """OpenAI Chat Completions and every compatible server (DeepSeek, Groq, xAI, OpenRouter, ...)."""
    prompt = prompt or 0
    completion = completion or 0
    ptd = _m(u.get("prompt_tokens_details"))
    ctd = _m(u.get("completion_tokens_details"))
    # DeepSeek: prompt_cache_hit_tokens; Moonshot and the HF router: top-level cached_tokens.
    cached = _first_int(ptd.get("cached_tokens"), u.get("prompt_cache_hit_tokens"), u.get("cached_tokens")) or 0
    write = _first_int(ptd.get("cache_write_tokens"), u.get("cache_write_tokens")) or 0
    # Azure AI Foundry puts a non-standard reasoning_tokens at the top level.
    reasoning = _first_int(ctd.get("reasoning_tokens"), u.get("reasoning_tokens")) or 0
    ticks = _int(u.get("cost_in_usd_ticks"))
    if not xai:
        # No hint needed with xAI's marks: cost in ticks, a sources count, or a reported total that only
        # adds up with reasoning on top of completion_tokens (whoever reports it that way means it).
        total = _int(u.get("total_tokens"))
        xai = (
            ticks is not None or "num_sources_used" in u or (reasoning > 0 and total == prompt + completion + reasoning)
        )
    if xai:
        completion += reasoning  # xAI's completion_tokens exclude reasoning
    return _Counts(prompt, cached, write, 0, completion, reasoning, _cost(u))


def _io(u: Mapping[str, Any], inp: int | None, out: int | None, xai: bool) -> _Counts:
    """`input_tokens`/`output_tokens`: the Responses API, Anthropic Messages, DashScope native."""
    inp = inp or 0
    read = _int(u.get("cache_read_input_tokens"))
    creation = _int(u.get("cache_creation_input_tokens"))
    ttl = u.get("cache_creation")
    if read is not None or creation is not None or ttl is not None:
        # Anthropic: input_tokens exclude cache reads and writes; the TTL buckets split the writes.
        buckets = _m(ttl)
        write_1h = _int(buckets.get("ephemeral_1h_input_tokens")) or 0
        if creation is None:
            creation = (_int(buckets.get("ephemeral_5m_input_tokens")) or 0) + write_1h
        cached, write = read or 0, creation
        inp += cached + write
    else:
        details = _m(u.get("input_tokens_details") or u.get("prompt_tokens_details"))
        cached = _int(details.get("cached_tokens")) or 0
        write = _int(details.get("cache_write_tokens")) or 0
        write_1h = 0
    otd = _m(u.get("output_tokens_details"))
    reasoning = _first_int(otd.get("reasoning_tokens"), otd.get("thinking_tokens")) or 0
    return _Counts(inp, cached, write, write_1h, out or 0, reasoning, _cost(u))


def _bedrock(u: Mapping[str, Any], inp: int | None, out: int | None, xai: bool) -> _Counts:
    """Bedrock Converse: inputTokens exclude cache reads and writes; each cache counter has a *Count twin."""
    read = _first_int(u.get("cacheReadInputTokens"), u.get("cacheReadInputTokenCount")) or 0
    write = _first_int(u.get("cacheWriteInputTokens"), u.get("cacheWriteInputTokenCount")) or 0
    details = u.get("cacheDetails")
    write_1h = 0
    if isinstance(details, list):
        write_1h = sum(_int(_m(d).get("inputTokens")) or 0 for d in details if _m(d).get("ttl") == "1h")
    return _Counts((inp or 0) + read + write, read, write, write_1h, out or 0, 0, None)


def _hunyuan(u: Mapping[str, Any], prompt: int | None, completion: int | None, xai: bool) -> _Counts:
    """Tencent Hunyuan API 3.0 (PascalCase `Usage`)."""
    details = _m(u.get("PromptTokensDetails"))  # read if Tencent reports it; absent in the documented shape
    cached = _int(details.get("CachedTokens")) or 0
    return _Counts(prompt or 0, cached, 0, 0, completion or 0, 0, None)


def _ollama(u: Mapping[str, Any], prompt: int | None, output: int | None, xai: bool) -> _Counts:
    """Ollama native: prompt_eval_count may be omitted when the whole prompt came from its cache."""
    return _Counts(prompt or 0, 0, 0, 0, output or 0, 0, None)


def _gemini_parser(prompt_key: str, tool: str, cand: str, thoughts: str, cached: str) -> _Shape:
    def parse(u: Mapping[str, Any], a: int | None, b: int | None, xai: bool) -> _Counts:
        # promptTokenCount includes cached content; thoughts and tool-use prompt are separate counters.
        prompt = (_int(u.get(prompt_key)) or 0) + (_int(u.get(tool)) or 0)
        thought = _int(u.get(thoughts)) or 0
        output = (_int(u.get(cand)) or 0) + thought
        return _Counts(prompt, _int(u.get(cached)) or 0, 0, 0, output, thought, None)

    return parse


#: (first count key, second count key, parser): a usage object is the first shape with either key
_SHAPES: Final[tuple[tuple[str, str, _Shape], ...]] = (
    ("prompt_tokens", "completion_tokens", _chat),
    ("input_tokens", "output_tokens", _io),
    ("inputTokens", "outputTokens", _bedrock),
    ("PromptTokens", "CompletionTokens", _hunyuan),
    (
        "promptTokenCount",
        "candidatesTokenCount",
        _gemini_parser(
            "promptTokenCount",
            "toolUsePromptTokenCount",
            "candidatesTokenCount",
            "thoughtsTokenCount",
            "cachedContentTokenCount",
        ),
    ),
    (  # google-genai SDK objects use snake_case field names
        "prompt_token_count",
        "candidates_token_count",
        _gemini_parser(
            "prompt_token_count",
            "tool_use_prompt_token_count",
            "candidates_token_count",
            "thoughts_token_count",
            "cached_content_token_count",
        ),
    ),
    ("prompt_eval_count", "eval_count", _ollama),
)


def _parse(obj: Any, xai: bool) -> _Counts | None:
    """Counts of one usage object, or None when it carries no counts (null, {}, trafficType only)."""
    u = _m(obj)
    if not u:
        return None
    for first, second, parser in _SHAPES:
        a, b = _int(u.get(first)), _int(u.get(second))
        if a is not None or b is not None:
            return parser(u, a, b, xai)
    return None


def _present(obj: Any) -> dict[str, Any]:
    """The fields of a usage object that carry a value: a later Anthropic message_delta wins on those only."""
    return {k: v for k, v in _m(obj).items() if v is not None}


# --- probes: where a response or chunk keeps its usage -----------------------------------------

_Probe = Callable[["UsageAccumulator", Mapping[str, Any], Any], bool]


def _probe_usage(acc: UsageAccumulator, d: Mapping[str, Any], usage: Any) -> bool:
    # OpenAI-compatible `usage`, Responses/Anthropic/DashScope/Bedrock non-stream `usage`, Anthropic message_delta.
    # The tier: Anthropic's usage.service_tier, Bedrock Converse's serviceTier {"type": ...}.
    tier = _m(usage).get("service_tier") or d.get("serviceTier")
    if d.get("type") == "message_delta":
        # Cumulative, and wins field by field over message_start (which may be missing).
        merged = {**(acc._anthropic or {}), **_present(usage)}
        return acc._found(_parse(merged, acc._xai), None, tier, anthropic=merged)
    return acc._found(_parse(usage, acc._xai), None, tier)


def _probe_response(acc: UsageAccumulator, d: Mapping[str, Any], response: Any) -> bool:
    # Responses API stream events: response.created / in_progress (usage null) ... response.completed.
    r = _m(response)
    acc._note(r.get("model"), r.get("service_tier"))
    return acc._found(_parse(r.get("usage"), acc._xai), None, None)


def _probe_message(acc: UsageAccumulator, d: Mapping[str, Any], message: Any) -> bool:
    # Anthropic message_start: input and cache counts; output_tokens there is a placeholder.
    msg = _m(message)
    usage = msg.get("usage")
    if usage is None:
        return False  # e.g. Ollama's `message`: its counts are top-level
    fields = _present(usage)
    return acc._found(_parse(fields, acc._xai), msg.get("model"), fields.get("service_tier"), anthropic=fields)


def _probe_usage_metadata(acc: UsageAccumulator, d: Mapping[str, Any], meta: Any) -> bool:
    m = _m(meta)
    return acc._found(_parse(m, acc._xai), None, m.get("serviceTier") or m.get("service_tier"))


def _probe_model_version(acc: UsageAccumulator, d: Mapping[str, Any], version: Any) -> bool:
    # Gemini names the model `modelVersion`: noted, never usage.
    acc._note(version, None)
    return False


def _probe_nested(key: str) -> _Probe:
    """Usage one level down: `x_groq.usage`, Hunyuan `Response.Usage`."""

    def probe(acc: UsageAccumulator, d: Mapping[str, Any], outer: Any) -> bool:
        return acc._found(_parse(_m(outer).get(key), acc._xai), None, None)

    return probe


def _probe_metadata(acc: UsageAccumulator, d: Mapping[str, Any], metadata: Any) -> bool:
    # Bedrock ConverseStream's closing `metadata` event: usage, metrics, serviceTier.
    m = _m(metadata)
    return acc._found(_parse(m.get("usage"), acc._xai), None, m.get("serviceTier"))


def _probe_choices(acc: UsageAccumulator, d: Mapping[str, Any], choices: Any) -> bool:
    # Moonshot/Kimi streams put usage inside choices[0] of the finishing chunk.
    if type(choices) is not list or not choices:
        return False
    first = choices[0]
    if type(first) is dict:
        usage = first.get("usage")
    else:  # an SDK Choice: usage is no declared field, it sits in the model's extras
        view = _view(first)
        usage = view.get("usage") if view is not None else None
    return usage is not None and acc._found(_parse(usage, acc._xai), None, None)


def _probe_self(acc: UsageAccumulator, d: Mapping[str, Any], value: Any) -> bool:
    # Ollama native: prompt_eval_count / eval_count on the done object itself.
    return acc._found(_parse(d, acc._xai), None, None)


def _probe_direct(acc: UsageAccumulator, d: Mapping[str, Any], usage: Any) -> bool:
    return acc._found(_parse(usage, acc._xai), None, None)


_PROBES: Final[dict[str, _Probe]] = {
    "usage": _probe_usage,
    "response": _probe_response,
    "message": _probe_message,
    "usageMetadata": _probe_usage_metadata,
    "usage_metadata": _probe_usage_metadata,
    "modelVersion": _probe_model_version,
    "model_version": _probe_model_version,
    "x_groq": _probe_nested("usage"),
    "choices": _probe_choices,
    "Usage": _probe_direct,
    "Response": _probe_nested("Usage"),
    "metadata": _probe_metadata,
    "eval_count": _probe_self,
    "prompt_eval_count": _probe_self,
}


@dataclass(frozen=True, slots=True)
class _Provider:
    """What a provider hint changes: how chat-shaped counts are read.

    A hint never narrows where usage is looked for: nearly every provider also serves an
    OpenAI-compatible endpoint (Gemini, Anthropic, Bedrock, Vertex, Ollama, ...), and a hint that hid
    `usage` there would turn a reported usage into an estimate. The chunk's shape decides that.
    """

    #: xAI: completion_tokens exclude reasoning (README of the provider corpus)
    xai: bool = False


_STANDARD: Final = _Provider()

#: the canonical provider ids accepted as hints (where each reports usage: ../shared/provider-corpus)
PROVIDERS: Final[Mapping[str, _Provider]] = {
    "openai": _STANDARD,
    "azure": _STANDARD,
    "anthropic": _STANDARD,
    "gemini": _STANDARD,
    "vertex": _STANDARD,
    "bedrock": _STANDARD,
    "deepseek": _STANDARD,
    "qwen": _STANDARD,
    "moonshot": _STANDARD,
    "hunyuan": _STANDARD,
    "mistral": _STANDARD,
    "groq": _STANDARD,
    "xai": _Provider(xai=True),
    "openrouter": _STANDARD,
    "perplexity": _STANDARD,
    "zai": _STANDARD,
    "avian": _STANDARD,
    "huggingface": _STANDARD,
    "vllm": _STANDARD,
    "llamacpp": _STANDARD,
    "ollama": _STANDARD,
}

#: other names seen for the same providers
_ALIASES: Final[Mapping[str, str]] = {
    "azure-openai": "azure",
    "azure_openai": "azure",
    "azure-ai-foundry": "azure",
    "google": "gemini",
    "google-gemini": "gemini",
    "google-genai": "gemini",
    "google-vertex": "vertex",
    "vertex_ai": "vertex",
    "vertexai": "vertex",
    "aws-bedrock": "bedrock",
    "amazon-bedrock": "bedrock",
    "dashscope": "qwen",
    "qwen-dashscope": "qwen",
    "alibaba": "qwen",
    "kimi": "moonshot",
    "moonshotai": "moonshot",
    "tencent": "hunyuan",
    "tencent-hunyuan": "hunyuan",
    "mistralai": "mistral",
    "x-ai": "xai",
    "grok": "xai",
    "z.ai": "zai",
    "zhipu": "zai",
    "hf": "huggingface",
    "huggingface-router": "huggingface",
    "llama.cpp": "llamacpp",
    "llama-cpp": "llamacpp",
}

_Probes = tuple[tuple[str, _Probe], ...]


def _probes(keys: tuple[str, ...]) -> _Probes:
    return tuple((key, _PROBES[key]) for key in keys)


_ALL_PROBES: Final[_Probes] = tuple(_PROBES.items())

#: The first chunk's shape tells the API family, and so the few places its usage can be: (a key the
#: family's chunks carry, the probes for it). Checked in order; no match: every probe, until a chunk
#: tells. This keeps `add` to a few dict lookups per chunk.
_FAMILIES: Final[tuple[tuple[str, _Probes], ...]] = (
    ("choices", _probes(("usage", "choices", "x_groq"))),  # Chat Completions and every compatible server
    ("type", _probes(("usage", "message", "response"))),  # Anthropic Messages and Responses API events
    ("candidates", _probes(("modelVersion", "usageMetadata", "model_version", "usage_metadata"))),  # Gemini
    ("usageMetadata", _probes(("modelVersion", "usageMetadata"))),
    ("usage_metadata", _probes(("model_version", "usage_metadata"))),
    ("Response", _probes(("Response", "Usage"))),  # Hunyuan API 3.0
    ("Choices", _probes(("Usage",))),  # Hunyuan SSE events
    ("done", _probes(("eval_count", "prompt_eval_count"))),  # Ollama native
    ("output", _probes(("usage",))),  # Responses object, DashScope native, Bedrock Converse
    ("contentBlockDelta", _probes(("metadata",))),  # Bedrock ConverseStream events
    ("messageStart", _probes(("metadata",))),
)


#: every top-level key `add` reads
_CHUNK_KEYS: Final = frozenset(
    [*_PROBES, *(key for key, _ in _FAMILIES), "model", "service_tier", "modelVersion", "model_version"]
)


def _family(d: Mapping[str, Any]) -> _Probes | None:
    for key, probes in _FAMILIES:
        if key in d:
            return probes
    return None


def canonical_provider(name: str | None) -> str | None:
    """The canonical id of a provider name or alias (`"Azure-OpenAI"` -> `"azure"`), None if unknown."""
    if not isinstance(name, str):
        return None
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    return key if key in PROVIDERS else None


# --- the accumulator -----------------------------------------------------------------------------


class UsageAccumulator:
    """Usage of a stream, fed one chunk or event at a time; the same for a whole response.

    Streams carry running totals: the last usage reported wins, never a sum. Anthropic's
    message_delta wins over message_start field by field. Chunks without usage, with usage null or
    without counts, and error events leave the result as it was. `.usage` is None until some chunk
    reports counts. `.model` and `.service_tier` are the last ones the stream reported.
    """

    __slots__ = ("_anthropic", "_counts", "_model", "_probes", "_tier", "_usage", "_xai", "provider")

    def __init__(self, provider: str | None = None) -> None:
        self.provider = canonical_provider(provider)
        #: None until a chunk tells the family; then only that family's probes run
        self._probes: _Probes | None = None
        self._xai = self.provider is not None and PROVIDERS[self.provider].xai
        self._counts: _Counts | None = None
        self._usage: Usage | None = None
        self._anthropic: dict[str, Any] | None = None
        self._model: str | None = None
        self._tier: str | None = None

    def add(self, chunk: Any) -> None:
        """Take one chunk (dict or SDK object). Never raises; anything unrecognized is ignored."""
        d = chunk if type(chunk) is dict else _chunk_view(chunk)
        if not d:
            return
        model = d.get("model")
        if type(model) is str and model:
            self._model = model
        tier = d.get("service_tier")
        if tier is not None:
            if type(tier) is str:
                self._tier = tier or self._tier
            else:
                self._note(None, tier)
        probes = self._probes
        if probes is None:
            probes = self._probes = _family(d)
            if probes is None:
                probes = _ALL_PROBES  # not known yet: look everywhere, decide on a later chunk
        # The cheap part: a dict lookup per usage-bearing key; only a chunk that has one is parsed.
        for key, probe in probes:
            value = d.get(key)
            if value is not None and probe(self, d, value):
                return

    def _note(self, model: Any, tier: Any) -> None:
        text = _text(model)
        if text is not None:
            self._model = text
        text = _tier(tier)
        if text is not None:
            self._tier = text

    def _found(self, counts: _Counts | None, model: Any, tier: Any, anthropic: dict[str, Any] | None = None) -> bool:
        self._note(model, tier)
        if counts is None:
            return False
        self._counts = counts
        self._usage = None
        self._anthropic = anthropic
        return True

    @property
    def usage(self) -> Usage | None:
        """The usage reported so far (the final one once the stream ended), None if none was."""
        if self._usage is None and self._counts is not None:
            self._usage = self._counts.usage()
        return self._usage

    @property
    def model(self) -> str | None:
        """The model name the response reported (`model`, `modelVersion`, `response.model`, ...)."""
        return self._model

    @property
    def service_tier(self) -> str | None:
        """The service tier the response reported, as reported (e.g. `default`, `flex`, `priority`)."""
        return self._tier


def _accumulate(payload: Any, provider: str | None) -> UsageAccumulator:
    acc = UsageAccumulator(provider)
    if isinstance(payload, list | tuple):
        # A recorded stream: its chunks in order.
        for chunk in payload:
            acc.add(chunk)
    else:
        acc.add(payload)
    return acc


def extract_usage(payload: Any, provider: str | None = None) -> Usage | None:
    """The usage a whole response reports (dict or SDK object), None when it reports none.

    A list is taken as the chunks of one stream, in order. `provider` is a hint (see PROVIDERS);
    None or an unknown name recognizes the shape.
    """
    return _accumulate(payload, provider).usage


def extract_model(payload: Any) -> str | None:
    """The model name a response (or a list of stream chunks) reports, None if it names none."""
    return _accumulate(payload, None).model


def extract_service_tier(payload: Any) -> str | None:
    """The service tier a response (or a list of stream chunks) reports, as reported, None if none."""
    return _accumulate(payload, None).service_tier
