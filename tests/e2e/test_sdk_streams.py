"""End to end: the real openai and anthropic SDK clients, sync and async, against the local fake LLM server,
through `producer.instrument` and the real publisher, to real Redis (events read back from the rq queue)."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import anthropic
import openai
import pytest
import redis
from rq import Queue
from rq.serializers import JSONSerializer

import producer
import producer.publisher as publisher_module
from producer import jobspec, tokens
from producer.event import UsageEvent
from worker.fakellm import DEFAULT_MODELS, FakeLLM

MSGS = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    with FakeLLM() as server:
        yield server


@pytest.fixture
def publisher(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[producer.Publisher]:
    """The process's default publisher, aimed at this test's Redis (direct mode: on the queue at once)."""
    monkeypatch.setattr(publisher_module, "_default", None)  # restored after the test
    pub = producer.configure(
        redis_url=redis_url, mode="direct", spool_dir=str(tmp_path / "spool"), handle_sigterm=False
    )
    yield pub
    pub.close()


def queued(redis_url: str) -> list[UsageEvent]:
    """Every event on the ingest queue: each job's args[0] is a list of event JSON strings."""
    conn = redis.Redis.from_url(redis_url)
    try:
        jobs = Queue(jobspec.DEFAULT_QUEUE, connection=conn, serializer=JSONSerializer).get_jobs()
        return [UsageEvent.model_validate_json(text) for job in jobs for text in job.args[0]]
    finally:
        conn.close()


def by_model(events: list[UsageEvent]) -> dict[str, UsageEvent]:
    out = {e.model: e for e in events}
    assert len(out) == len(events), "one event per call"
    return out


def test_openai_sync(fake: FakeLLM, publisher: producer.Publisher, redis_url: str) -> None:
    base = openai.OpenAI(base_url=fake.url, api_key="test", max_retries=0)
    client = producer.instrument(base, org_id="acme", user_id="u1")
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == DEFAULT_MODELS["gpt-4o-mini"].reply
    client.chat.completions.create(model="o3-mini", messages=MSGS)
    list(client.responses.create(model="gpt-4o-cached", input="hi", stream=True))
    list(client.chat.completions.create(model="no-usage-model", messages=MSGS, stream=True))
    stream = client.chat.completions.create(model="gpt-4o-flex", messages=MSGS, stream=True)
    next(stream)
    del stream
    gc.collect()
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="error-model", messages=MSGS, stream=True))
    base.close()
    assert publisher.flush()

    events = by_model(queued(redis_url))
    assert {m: e.status for m, e in events.items()} == {
        "gpt-4o-mini": "ok",
        "o3-mini": "ok",
        "gpt-4o-cached": "ok",
        "no-usage-model": "ok",
        "gpt-4o-flex": "aborted",
        "error-model": "error",
    }
    assert all(e.org_id == "acme" and e.user_id == "u1" and e.provider == "openai" for e in events.values())
    assert fake.requests[0].body["stream_options"] == {"include_usage": True}
    u = events["gpt-4o-mini"].usage
    assert (u.input_tokens, u.output_tokens, events["gpt-4o-mini"].estimated) == (21, 10, False)
    u = events["o3-mini"].usage
    assert (u.input_tokens, u.output_tokens, u.reasoning_tokens) == (30, 150, 128)
    u = events["gpt-4o-cached"].usage
    assert (u.input_tokens, u.cached_input_tokens, u.output_tokens) == (1200, 1024, 8)
    ev = events["no-usage-model"]
    assert ev.estimated and ev.usage.input_tokens == tokens.count_messages(MSGS, "no-usage-model")
    assert ev.usage.output_tokens == tokens.count_text(DEFAULT_MODELS["no-usage-model"].reply, "no-usage-model")
    assert events["gpt-4o-flex"].service_tier == "flex" and events["gpt-4o-flex"].estimated
    assert events["error-model"].tags["usagebill.error"] == "APIError"


def test_openai_async_and_gather(fake: FakeLLM, publisher: producer.Publisher, redis_url: str) -> None:
    models = ["gpt-4o-mini", "o3-mini", "slow-model", "gpt-4o-cached"]

    async def main() -> None:
        base = openai.AsyncOpenAI(base_url=fake.url, api_key="test", max_retries=0)
        client = producer.instrument(base)

        async def one(model: str) -> None:
            with producer.billing_context(org_id=f"org-{model}"):
                stream = await client.chat.completions.create(model=model, messages=MSGS, stream=True)
            async for _ in stream:
                pass

        await asyncio.gather(*(one(m) for m in models))
        with producer.billing_context(org_id="acme"):
            stream = await client.chat.completions.create(model="gpt-4o-flex", messages=MSGS, stream=True)
            async for _ in stream:
                break
            await stream.close()
            await client.responses.create(model="o3-mini-responses", input="hi")
        await base.close()

    asyncio.run(main())
    assert publisher.flush()
    events = queued(redis_url)
    fanned = by_model([e for e in events if e.org_id.startswith("org-")])
    assert sorted(fanned) == sorted(models)
    for model, ev in fanned.items():
        assert ev.org_id == f"org-{model}" and ev.status == "ok" and not ev.estimated
        assert ev.usage.input_tokens == DEFAULT_MODELS[model].input_tokens
    rest = by_model([e for e in events if e.org_id == "acme"])
    assert rest["gpt-4o-flex"].status == "aborted"
    assert rest["o3-mini-responses"].status == "ok" and rest["o3-mini-responses"].usage.input_tokens == 20


def test_anthropic_sync_and_async(fake: FakeLLM, publisher: producer.Publisher, redis_url: str) -> None:
    sync_base = anthropic.Anthropic(base_url=fake.url, api_key="test", max_retries=0)
    client = producer.instrument(sync_base, org_id="acme", request_type="sync")
    list(client.messages.create(model="claude-opus-4-5", max_tokens=64, messages=MSGS, stream=True))
    with client.messages.stream(model="claude-haiku-4-5", max_tokens=64, messages=MSGS) as stream:
        assert stream.get_final_text() == DEFAULT_MODELS["claude-haiku-4-5"].reply
    sync_base.close()

    async def main() -> None:
        base = anthropic.AsyncAnthropic(base_url=fake.url, api_key="test", max_retries=0)
        aclient = producer.instrument(base, org_id="acme", request_type="async")
        async for _ in await aclient.messages.create(
            model="claude-opus-4-5", max_tokens=64, messages=MSGS, stream=True
        ):
            pass
        async with aclient.messages.stream(model="claude-haiku-4-5", max_tokens=64, messages=MSGS) as s:
            await s.get_final_message()
        with pytest.raises(anthropic.APIError):
            async for _ in await aclient.messages.create(
                model="error-model", max_tokens=64, messages=MSGS, stream=True
            ):
                pass
        await base.close()

    asyncio.run(main())
    assert publisher.flush()
    events = queued(redis_url)
    assert len(events) == 5
    for kind in ("sync", "async"):
        got = by_model([e for e in events if e.request_type == kind and e.model != "error-model"])
        u = got["claude-opus-4-5"].usage
        assert (u.input_tokens, u.cached_input_tokens, u.cache_write_tokens, u.cache_write_1h_tokens) == (
            2312,
            2000,
            300,
            100,
        )
        assert u.output_tokens == 9
        assert (got["claude-haiku-4-5"].usage.input_tokens, got["claude-haiku-4-5"].usage.output_tokens) == (15, 4)
        assert all(e.status == "ok" and e.provider == "anthropic" for e in got.values())
    [failed] = [e for e in events if e.model == "error-model"]
    # message_start had already reported usage: that is what the provider said, so nothing is estimated
    assert failed.status == "error" and not failed.estimated and failed.usage.input_tokens == 20


def test_threads_fan_out_and_openrouter(fake: FakeLLM, publisher: producer.Publisher, redis_url: str) -> None:
    base = openai.OpenAI(base_url=fake.url, api_key="test", max_retries=0)
    client = producer.instrument(base, provider="openrouter", org_id="acme")
    models = ["gpt-4o-mini", "o3-mini", "slow-model", "gpt-4o-cached", "gpt-4o-flex"]

    def run(model: str) -> None:
        for _ in client.chat.completions.create(model=model, messages=MSGS, stream=True):
            pass

    threads = [threading.Thread(target=run, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    base.close()
    assert publisher.flush()
    events = by_model(queued(redis_url))
    assert sorted(events) == sorted(models)
    assert all(r.body["usage"] == {"include": True} for r in fake.requests[-len(models) :])
    for model, ev in events.items():
        assert ev.provider == "openrouter" and ev.status == "ok"
        assert ev.usage.provider_cost == Decimal("0.000123")
        assert ev.usage.output_tokens == DEFAULT_MODELS[model].output_tokens
