"""Per-event cost of wire-format validation: billing.ingest.parse with the live event model vs the old one.

The old model is the frozen copy in tests/unit/event_v1_frozen.py; both are timed in the same run on
the same events: N events of the shape bench_ingest.py publishes, a share of them (--enriched) also
carrying more tags, a service tier, a provider cost, a session and a +02:00 offset, a share of them
(--invalid) made invalid. A third
model, "floor", has the same fields and types with no checks and no normalisation at all: not a valid
validator, the lower bound of what moving the checks anywhere could give. The machine is shared and
noisy: the events are timed in chunks, the models interleaved chunk by chunk, and each chunk's best
CPU time (process_time) over --repeat rounds is kept. Also printed: the validation alone
(model_validate_json) and the canonical dump alone (model_dump_json) of each model, and parse()'s
canonical + sha256 step as it is vs the same bytes taken from the model's serializer directly.

    .venv/bin/python bench/bench_validate.py [--events 3000] [--enriched 0.33] [--invalid 0.05] [--repeat 60]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from decimal import Decimal  # noqa: E402

from ingest_env import START, event_doc  # noqa: E402  (bench/, beside this script)
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt  # noqa: E402

import billing.ingest  # noqa: E402
from billing.ingest import Parsed, parse  # noqa: E402
from producer.event import UsageEvent  # noqa: E402
from tests.unit import event_v1_frozen  # noqa: E402

NOW = START + timedelta(days=40)
TOLERANCE = timedelta(seconds=300)


class _OldIncoming(event_v1_frozen.UsageEvent):
    """billing.ingest._Incoming, on the old model."""

    model_config = ConfigDict(frozen=True, extra="allow")


class _FloorUsage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    cache_write_1h_tokens: StrictInt = 0
    cache_write_tokens: StrictInt
    cached_input_tokens: StrictInt
    input_tokens: StrictInt
    output_tokens: StrictInt
    provider_cost: Decimal | None = None
    reasoning_tokens: StrictInt


class _Floor(BaseModel):
    """The event's fields and types without a single check or normalisation (a lower bound only)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    estimated: bool = False
    event_id: str
    latency_ms: StrictInt | None = None
    model: str
    occurred_at: AwareDatetime
    org_id: str
    provider: str
    request_type: str | None = None
    reservation_id: str | None = None
    schema_version: int
    service_tier: str | None = None
    session_id: str | None = None
    status: str = "ok"
    tags: dict[str, str] = Field(default_factory=dict)
    usage: _FloorUsage
    user_id: str | None = None


def valid_doc(rng: random.Random, i: int, enriched: bool) -> dict[str, Any]:
    """An event as bench_ingest.py publishes it; `enriched`: also more tags, tier, cost and a session."""
    doc = event_doc(rng, f"ev_1_{i:09d}", orgs=50, users=200)
    if enriched:
        doc["tags"].update({"team": f"t{rng.randrange(9)}", "env": "prod"})
        doc["session_id"] = f"sess-{rng.randrange(10**6)}"
        doc["service_tier"] = rng.choice(["default", "batch", "flex"])
        doc["usage"]["provider_cost"] = round(rng.random() / 100, 8)
        doc["occurred_at"] = doc["occurred_at"].replace("+00:00", "+02:00")
    return doc


INVALID: list[Callable[[dict[str, Any]], None]] = [
    lambda d: d.update(org_id="a\x00b"),
    lambda d: d.update(occurred_at="2026-10-03T10:00:00"),
    lambda d: d["usage"].update(reasoning_tokens=d["usage"]["output_tokens"] + 1),
    lambda d: d["usage"].update(input_tokens="100"),
    lambda d: d.update(event_id="has space"),
    lambda d: d["tags"].update(k="v\x00"),
]


def make_events(n: int, invalid: float, enriched: float = 1 / 3, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        doc = valid_doc(rng, i, rng.random() < enriched)
        if rng.random() < invalid:
            rng.choice(INVALID)(doc)
        texts.append(json.dumps(doc))
    return texts


def parse_with(model: type[Any], texts: list[str]) -> Parsed:
    billing.ingest._Incoming = model  # type: ignore[misc]  # parse() looks it up at each call
    return parse(texts, now=NOW, future_tolerance=TOLERANCE)


def validate_all(model: type[Any], texts: list[str]) -> None:
    validate = model.model_validate_json
    for text in texts:
        try:  # noqa: SIM105  (contextlib.suppress would add its own cost to the timed loop)
            validate(text)
        except ValueError:
            pass


def dump_all(model: type[Any], texts: list[str]) -> None:
    del model
    for event in texts:
        event.model_dump_json()  # type: ignore[attr-defined]  # here "texts" are validated events


def canonical_dump(model: type[Any], events: list[Any]) -> None:
    """parse()'s canonical + hash step as it is: model_dump_json, then encode for sha256."""
    del model
    for event in events:
        extra = event.model_extra
        canonical = event.model_dump_json(exclude=set(extra)) if extra else event.model_dump_json()
        hashlib.sha256(canonical.encode()).digest()


def canonical_serializer(model: type[Any], events: list[Any]) -> None:
    """The same bytes from the model's serializer directly (no model_dump_json wrapper, one decode)."""
    serialize = model.__pydantic_serializer__.to_json
    for event in events:
        extra = event.model_extra
        raw = serialize(event, exclude=set(extra)) if extra else serialize(event)
        hashlib.sha256(raw).digest()
        raw.decode()


def valid_events(model: type[Any], texts: list[str]) -> list[Any]:
    out = []
    for text in texts:
        with contextlib.suppress(ValueError):
            out.append(model.model_validate_json(text))
    return out


def best_times(
    work: Callable[[Any, list[Any]], Any], models: dict[str, Any], inputs: dict[str, list[Any]], args: Any
) -> dict[str, float]:
    """us per item of `work(model, chunk)`: per chunk the best of args.repeat rounds, models interleaved."""
    best: dict[tuple[str, int], float] = {}
    for _ in range(args.repeat):
        for name, model in models.items():
            items = inputs[name]
            for i in range(0, len(items), args.chunk):
                start = time.process_time()
                work(model, items[i : i + args.chunk])
                seconds = time.process_time() - start
                best[name, i] = min(best.get((name, i), seconds), seconds)
    return {name: sum(v for (n, _), v in best.items() if n == name) / len(inputs[name]) * 1e6 for name in models}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=3000)
    ap.add_argument("--enriched", type=float, default=0.33, help="share of events with the optional fields")
    ap.add_argument("--invalid", type=float, default=0.05, help="share of invalid events")
    ap.add_argument("--repeat", type=int, default=60)
    ap.add_argument("--chunk", type=int, default=250)
    args = ap.parse_args()
    texts = make_events(args.events, args.invalid, args.enriched)
    live = billing.ingest._Incoming
    assert issubclass(live, UsageEvent)
    models: dict[str, type[Any]] = {"old": _OldIncoming, "new": live, "floor": _Floor}
    events_new = valid_events(live, texts)
    serialize = live.__pydantic_serializer__.to_json
    assert all(serialize(e, exclude=set(e.model_extra or ())) == e.canonical() for e in events_new)
    try:
        old, new = parse_with(_OldIncoming, texts), parse_with(live, texts)
        same_text = {name: texts for name in models}
        parse_us = best_times(parse_with, models, same_text, args)
        validate_us = best_times(validate_all, models, same_text, args)
        events = {name: valid_events(model, texts) for name, model in models.items()}
        dump_us = best_times(dump_all, models, events, args)
        steps = {"model_dump_json": canonical_dump, "serializer": canonical_serializer}
        step_us = best_times(lambda step, items: step(live, items), steps, dict.fromkeys(steps, events_new), args)
    finally:
        billing.ingest._Incoming = live  # type: ignore[misc]
    same = old.rows == new.rows and [(r.pos, r.reason) for r in old.rejected] == [
        (r.pos, r.reason) for r in new.rejected
    ]
    print(
        f"{args.events} events, {args.enriched:.0%} enriched, {len(new.rejected)} invalid; CPU us per event "
        f"(per chunk of {args.chunk}, best of {args.repeat} interleaved rounds)"
    )
    print(f"  {'model':6s} {'parse()':>8s} {'validate':>9s} {'dump':>6s}")
    for name in models:
        print(f"  {name:6s} {parse_us[name]:8.2f} {validate_us[name]:9.2f} {dump_us[name]:6.2f}")
    print(
        f"  new / old parse(): {parse_us['new'] / parse_us['old']:.3f}; floor / old: "
        f"{parse_us['floor'] / parse_us['old']:.3f}; old and new give the same rows, hashes and reasons: {same}"
    )
    print(
        "parse()'s canonical + sha256 step, live model (same bytes): model_dump_json + encode "
        f"{step_us['model_dump_json']:.2f} us/event, __pydantic_serializer__.to_json + decode "
        f"{step_us['serializer']:.2f} us/event"
    )


if __name__ == "__main__":
    main()
