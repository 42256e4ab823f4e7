"""Benchmark: pricing 100k events with `insert_priced` (set-based SQL) vs litellm and genai-prices per event.

    .venv/bin/python bench/bench_pricing.py [--events 100000] [--batch 1000] [--reference-events N]

Creates a scratch database (usagebill_bench_pricing_<pid>), imports the shipped public rates, builds
the same events for every contender and prices them:
  * usagebill `insert_priced` (the statement the ingest runs: every row of a batch table into the next
    table with its rates resolved and its costs computed) in batches of --batch rows (the ingest shape:
    COPY into a per-session temp table, insert priced, commit; only the insert is timed) and in one
    batch of all events; first with the shipped list alone, then with the genai-prices catalogue imported
    on top (thousands of rows: the per-batch rate lookup must not grow with them);
  * the same INSERT of the same rows without pricing (the rows have to move anyway): pricing's cost is
    the difference, reported as "pricing" per event, and the whole priced insert is reported too;
  * `litellm.cost_per_token` and `genai_prices.calc_price`, one call per event (installed for the
    benchmark only; a missing one is reported and skipped).
Each SQL shape runs --repeat times, alternating, and the median is kept. Prints microseconds per event
and the ratios. The machine is shared: run it twice and compare.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg

from billing import migrate
from billing.db import CONNECT_OPTIONS
from billing.errors import ConfigError
from billing.pricing import insert_priced
from billing.rates import import_builtin, import_rows

ADMIN_URL = os.environ.get("USAGEBILL_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")

#: (provider, model as sent, litellm model, genai-prices provider id): models all three contenders know
MODELS = [
    ("openai", "gpt-4o", "gpt-4o", "openai"),
    ("openai", "gpt-4o-mini", "gpt-4o-mini", "openai"),
    ("openai", "gpt-4.1", "gpt-4.1", "openai"),
    ("openai", "o4-mini", "o4-mini", "openai"),
    ("anthropic", "claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20250929", "anthropic"),
    ("anthropic", "claude-haiku-4-5-20251001", "claude-haiku-4-5-20251001", "anthropic"),
    ("google", "gemini-2.5-pro", "gemini/gemini-2.5-pro", "google"),
    ("google", "gemini-2.5-flash", "gemini/gemini-2.5-flash", "google"),
    ("mistral", "mistral-large-2512", "mistral/mistral-large-2512", "mistral"),
    ("deepseek", "deepseek-chat", "deepseek/deepseek-chat", "deepseek"),
    ("moonshot", "kimi-k2.6", "moonshot/kimi-k2.6", "moonshotai"),
]
COLUMNS = (
    "event_id",
    "org_id",
    "provider",
    "model",
    "occurred_at",
    "usage_month",
    "billing_month",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)


def make_events(n: int, seed: int = 7) -> list[tuple[Any, ...]]:
    rng = random.Random(seed)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    events = []
    for i in range(n):
        provider, model, _, _ = MODELS[rng.randrange(len(MODELS))]
        at = start + timedelta(seconds=rng.randrange(20 * 86400))
        inp = rng.randrange(50, 30_000)
        cached = rng.randrange(0, inp) if rng.random() < 0.4 else 0
        write = rng.randrange(0, inp - cached) if provider == "anthropic" and rng.random() < 0.3 else 0
        out = rng.randrange(1, 4000)
        reasoning = rng.randrange(0, out) if rng.random() < 0.3 else 0
        month = at.date().replace(day=1)
        events.append(
            (f"b{i}", f"org{rng.randrange(50)}", provider, model, at, month, month, inp, cached, write, out, reasoning)
        )
    return events


#: the same rows moved without pricing: what the ingest's insert costs anyway
PLAIN = (
    "INSERT INTO bench_out (event_id, org_id, provider, model, occurred_at, usage_month, billing_month,"
    " input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens)"
    " SELECT event_id, org_id, provider, model, occurred_at, usage_month, billing_month,"
    " input_tokens, cached_input_tokens, cache_write_tokens, output_tokens, reasoning_tokens FROM bench_new"
)


def bench_sql(url: str, events: list[tuple[Any, ...]], batch: int, *, priced: bool) -> tuple[float, Decimal, int]:
    """Seconds spent in the insert (priced or plain) over all events, the total cost, the priced count."""
    spent = 0.0
    total = Decimal(0)
    count = 0
    # temp_buffers: a 100k-row batch fits in memory, as a 1000-row one does with the default
    with psycopg.connect(url, options=CONNECT_OPTIONS + " -c temp_buffers=256MB") as conn:
        conn.execute("CREATE TEMP TABLE bench_new (LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
        conn.execute("CREATE TEMP TABLE bench_out (LIKE events INCLUDING DEFAULTS) ON COMMIT DELETE ROWS")
        conn.commit()
        for lo in range(0, len(events), batch):
            with conn.transaction():
                with conn.cursor() as cur, cur.copy(f"COPY bench_new ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                    for row in events[lo : lo + batch]:
                        copy.write_row(row)
                t0 = time.perf_counter()
                if priced:
                    insert_priced(conn, "bench_new", "bench_out")
                else:
                    conn.execute(PLAIN)
                spent += time.perf_counter() - t0
                row = conn.execute("SELECT coalesce(sum(cost_total), 0), count(rate_id) FROM bench_out").fetchone()
                assert row is not None
                total += row[0]
                count += row[1]
    return spent, total, count


def bench_calls(name: str, fn: Callable[[tuple[Any, ...]], Any], events: list[tuple[Any, ...]]) -> float | None:
    try:
        fn(events[0])
    except Exception as exc:  # a contender that cannot run offline is reported, not fatal
        print(f"{name}: cannot run ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None
    t0 = time.perf_counter()
    for e in events:
        fn(e)
    return time.perf_counter() - t0


def litellm_fn() -> Callable[[tuple[Any, ...]], Any] | None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # the bundled price map: no network
    try:
        import litellm  # noqa: PLC0415
    except ImportError as exc:
        print(f"litellm not installed: {exc}", file=sys.stderr)
        return None
    models = {m[1]: m[2] for m in MODELS}

    def call(e: tuple[Any, ...]) -> Any:
        return litellm.cost_per_token(
            model=models[e[3]],
            prompt_tokens=e[7],
            completion_tokens=e[10],
            cache_read_input_tokens=e[8],
            cache_creation_input_tokens=e[9],
        )

    return call


def genai_fn() -> Callable[[tuple[Any, ...]], Any] | None:
    try:
        import genai_prices  # noqa: PLC0415
    except ImportError as exc:
        print(f"genai-prices not installed: {exc}", file=sys.stderr)
        return None
    providers = {m[1]: m[3] for m in MODELS}

    def call(e: tuple[Any, ...]) -> Any:
        usage = genai_prices.Usage(
            input_tokens=e[7], cache_read_tokens=e[8], cache_write_tokens=e[9], output_tokens=e[10]
        )
        return genai_prices.calc_price(usage, e[3], provider_id=providers[e[3]], genai_request_timestamp=e[4])

    return call


#: the rate tables each SQL shape is timed against
CONFIGS = {False: "the shipped public list", True: "the shipped list and the genai-prices catalogue"}


def add_catalogue(url: str) -> bool:
    """Import the genai-prices catalogue (in force since 2020) on top of the shipped list, as a user
    would: rates then hold thousands of rows, of which a batch needs a handful. False when not installed."""
    try:
        from billing import catalog  # noqa: PLC0415 - needs the optional genai-prices package

        mapped = catalog.catalog_rows(since=datetime(2020, 1, 1, tzinfo=UTC))
    except ConfigError as exc:
        print(f"genai-prices catalogue not measured: {exc}", file=sys.stderr)
        return False
    with psycopg.connect(url, autocommit=True, options=CONNECT_OPTIONS) as conn:
        import_rows(conn, list(enumerate(mapped.rows, start=1)), where="bench", default_source="bench")
        conn.execute("ANALYZE rates")
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--reference-events", type=int, default=None, help="events per reference library")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each SQL shape (the median is kept)")
    args = parser.parse_args()
    events = make_events(args.events)
    name = f"usagebill_bench_pricing_{os.getpid()}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        with psycopg.connect(url, autocommit=True, options=CONNECT_OPTIONS) as conn:
            migrate.migrate(conn)
            import_builtin(conn)
        n = len(events)
        results: dict[str, float] = {}
        for catalogue in (False, True):
            if catalogue and not add_catalogue(url):
                break
            with psycopg.connect(url, options=CONNECT_OPTIONS) as conn:
                count_rates = conn.execute("SELECT count(*) FROM rates").fetchone()
            print(f"rates table: {count_rates[0] if count_rates else 0} rows ({CONFIGS[catalogue]})")
            for size in (args.batch, n):
                where = f"batches of {size}" if size < n else f"one batch of {n}"
                runs: dict[bool, list[float]] = {True: [], False: []}
                for _ in range(args.repeat):  # alternating, so that both shapes see the same machine
                    for priced in (False, True):
                        spent, total, count = bench_sql(url, events, size, priced=priced)
                        runs[priced].append(spent)
                plain, whole = statistics.median(runs[False]), statistics.median(runs[True])
                print(f"insert without pricing, {where:<22} {plain / n * 1e6:9.2f} us/event")
                print(
                    f"insert_priced, {where:<31} {whole / n * 1e6:9.2f} us/event  (runs: "
                    f"{', '.join(f'{r / n * 1e6:.2f}' for r in runs[True])}; priced {count}/{n}, total {total:.2f} USD)"
                )
                print(f"  pricing (the difference), {where:<20} {(whole - plain) / n * 1e6:9.2f} us/event")
                label = f"{where}{', catalogue' if catalogue else ''}"
                results[f"pricing in {label}"] = whole - plain
                results[f"whole insert, {label}"] = whole
        ref = events[: args.reference_events] if args.reference_events else events
        for label, maker in (("litellm.cost_per_token", litellm_fn), ("genai_prices.calc_price", genai_fn)):
            fn = maker()
            spent_ref = bench_calls(label, fn, ref) if fn else None
            if spent_ref is None:
                continue
            per = spent_ref / len(ref) * 1e6
            ratios = ", ".join(f"{per / (v / n * 1e6):.0f}x vs {k}" for k, v in results.items())
            print(f"{label:<40} {per:9.2f} us/event  over {len(ref)} events; usagebill is {ratios}")
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
