"""Worked pricing vectors, computed by hand from published list prices (the oracle of pricing tests).

Each expected cost below was worked out on paper from the price in the comment, not produced by code.
Prices are USD per million tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from psycopg.rows import dict_row

from billing.pricing import Adjustment, Rate

D = Decimal


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@dataclass(frozen=True)
class Vector:
    name: str
    rates: tuple[Rate, ...]
    event: dict[str, Any]
    #: expected cost per category (categories not listed: 0), None = unpriced
    costs: dict[str, Decimal] | None
    total: Decimal | None
    rate_id: int | None = None
    adjustments: tuple[Adjustment, ...] = ()
    currency: str = "USD"
    extra: dict[str, Any] = field(default_factory=dict)


def ev(model: str, occurred_at: str, provider: str, **counts: Any) -> dict[str, Any]:
    base = {
        "org_id": "acme",
        "provider": provider,
        "model": model,
        "occurred_at": at(occurred_at),
        "input_tokens": 0,
        "cached_input_tokens": 0,
        "cache_write_tokens": 0,
        "cache_write_1h_tokens": 0,
        "output_tokens": 0,
        "reasoning_tokens": 0,
        "service_tier": None,
    }
    base.update(counts)
    return base


# OpenAI gpt-4o (openai.com/api/pricing, 2024-08-06 onward): input 2.50, cached input 1.25, output 10.00
GPT_4O = Rate(1, "openai", "gpt-4o", at("2024-08-06T00:00:00+00:00"), D("2.50"), D("10.00"), D("1.25"))
# Anthropic Claude Sonnet 4 (anthropic.com/pricing, 2025-05-22): input 3, 5-minute cache write 3.75,
# 1-hour cache write 6, cache read 0.30, output 15
SONNET_4 = Rate(
    2,
    "anthropic",
    "claude-sonnet-4*",
    at("2025-05-22T00:00:00+00:00"),
    D("3"),
    D("15"),
    price_cached_input=D("0.30"),
    price_cache_write=D("3.75"),
    price_cache_write_1h=D("6"),
)
# DeepSeek deepseek-chat (api-docs.deepseek.com/quick_start/pricing, V3.2 from 2025-09-29): cache hit
# 0.028, cache miss 0.28, output 0.42
DEEPSEEK_CHAT = Rate(3, "deepseek", "deepseek-chat", at("2025-09-29T00:00:00+00:00"), D("0.28"), D("0.42"), D("0.028"))
# Alibaba Cloud Model Studio (international) qwen-plus, Qwen3 (2025-04-28): input 0.4, output 1.2
# (non-thinking), thinking output 4: reasoning at its own rate
QWEN_PLUS = Rate(4, "qwen", "qwen-plus", at("2025-04-28T00:00:00+00:00"), D("0.4"), D("1.2"), price_reasoning=D("4"))
# OpenAI o4-mini (2025-04-16): input 1.10, cached 0.275, output 4.40; reasoning is billed as output
O4_MINI = Rate(5, "openai", "o4-mini", at("2025-04-16T00:00:00+00:00"), D("1.10"), D("4.40"), D("0.275"))
# Google Gemini 2.5 Pro (ai.google.dev/gemini-api/docs/pricing): prompts <= 200k tokens: input 1.25,
# output 10; prompts > 200k: input 2.50, output 15 ("> 200k" is a threshold of 200001)
GEMINI_PRO = Rate(6, "google", "gemini-2.5-pro", at("2025-06-17T00:00:00+00:00"), D("1.25"), D("10"))
GEMINI_PRO_LONG = Rate(
    7, "google", "gemini-2.5-pro", at("2025-06-17T00:00:00+00:00"), D("2.50"), D("15"), min_input_tokens=200_001
)
# DeepSeek deepseek-chat, V3 list price (from 2025-02-09): miss 0.27, hit 0.07, output 1.10; V3.1 list
# price from 2025-09-05: miss 0.56, hit 0.07, output 1.68 (dated at 00:00 UTC here: the rule's date form)
DEEPSEEK_V3 = Rate(8, "deepseek", "deepseek-chat", at("2025-02-09T00:00:00+00:00"), D("0.27"), D("1.10"), D("0.07"))
DEEPSEEK_V31 = Rate(9, "deepseek", "deepseek-chat", at("2025-09-05T00:00:00+00:00"), D("0.56"), D("1.68"), D("0.07"))
# Mistral Medium 3 (mistral.ai/pricing, 2025-05-07): input 0.4, output 2
MISTRAL_MEDIUM = Rate(10, "mistral", "mistral-medium*", at("2025-05-07T00:00:00+00:00"), D("0.4"), D("2"))

VECTORS: list[Vector] = [
    Vector(
        # 10,000 prompt tokens of which 6,000 cached; 500 output.
        # 4,000 * 2.50 + 6,000 * 1.25 + 500 * 10 = 10,000 + 7,500 + 5,000 = 22,500 / 1e6
        # (counting the cached tokens twice would give 0.0325)
        "openai cached subset",
        (GPT_4O,),
        ev(
            "gpt-4o",
            "2025-03-10T12:00:00+00:00",
            "openai",
            input_tokens=10_000,
            cached_input_tokens=6_000,
            output_tokens=500,
        ),
        {"input": D("0.01"), "cached_input": D("0.0075"), "output": D("0.005")},
        D("0.0225"),
        rate_id=1,
    ),
    Vector(
        # Anthropic reports input_tokens=100, cache_read=20,000, cache_creation=5,000 (5-minute), output 800.
        # Normalized input = 25,100. 100 * 3 + 20,000 * 0.30 + 5,000 * 3.75 + 800 * 15
        # = 300 + 6,000 + 18,750 + 12,000 = 37,050 / 1e6
        "anthropic cache read + 5-minute write",
        (SONNET_4,),
        ev(
            "claude-sonnet-4-20250514",
            "2025-07-01T08:00:00+00:00",
            "anthropic",
            input_tokens=25_100,
            cached_input_tokens=20_000,
            cache_write_tokens=5_000,
            output_tokens=800,
        ),
        {"input": D("0.0003"), "cached_input": D("0.006"), "cache_write": D("0.01875"), "output": D("0.012")},
        D("0.03705"),
        rate_id=2,
    ),
    Vector(
        # as above but 2,000 of the 5,000 written for 1 hour: 3,000 * 3.75 + 2,000 * 6 = 11,250 + 12,000
        # total 300 + 6,000 + 11,250 + 12,000 + 12,000 = 41,550 / 1e6
        "anthropic 1-hour cache write",
        (SONNET_4,),
        ev(
            "claude-sonnet-4-20250514",
            "2025-07-01T08:00:00+00:00",
            "anthropic",
            input_tokens=25_100,
            cached_input_tokens=20_000,
            cache_write_tokens=5_000,
            cache_write_1h_tokens=2_000,
            output_tokens=800,
        ),
        {
            "input": D("0.0003"),
            "cached_input": D("0.006"),
            "cache_write": D("0.01125"),
            "cache_write_1h": D("0.012"),
            "output": D("0.012"),
        },
        D("0.04155"),
        rate_id=2,
    ),
    Vector(
        # prompt 50,000, prompt_cache_hit_tokens 30,000, completion 1,000.
        # 20,000 * 0.28 + 30,000 * 0.028 + 1,000 * 0.42 = 5,600 + 840 + 420 = 6,860 / 1e6
        "deepseek cache hit",
        (DEEPSEEK_CHAT,),
        ev(
            "deepseek-chat",
            "2025-10-15T00:00:00+00:00",
            "deepseek",
            input_tokens=50_000,
            cached_input_tokens=30_000,
            output_tokens=1_000,
        ),
        {"input": D("0.0056"), "cached_input": D("0.00084"), "output": D("0.00042")},
        D("0.00686"),
        rate_id=3,
    ),
    Vector(
        # input 2,000; output 3,000 of which reasoning 2,500.
        # 2,000 * 0.4 + 500 * 1.2 + 2,500 * 4 = 800 + 600 + 10,000 = 11,400 / 1e6
        "reasoning at its own rate",
        (QWEN_PLUS,),
        ev(
            "qwen-plus",
            "2025-06-01T00:00:00+00:00",
            "qwen",
            input_tokens=2_000,
            output_tokens=3_000,
            reasoning_tokens=2_500,
        ),
        {"input": D("0.0008"), "output": D("0.0006"), "reasoning": D("0.01")},
        D("0.0114"),
        rate_id=4,
    ),
    Vector(
        # input 1,000; output 5,000 of which reasoning 4,000; no reasoning price: the output price.
        # 1,000 * 1.10 + 1,000 * 4.40 + 4,000 * 4.40 = 1,100 + 4,400 + 17,600 = 23,100 / 1e6
        # (reasoning at zero would give 0.0055; reasoning counted twice 0.0407)
        "reasoning at the output rate",
        (O4_MINI,),
        ev(
            "o4-mini",
            "2025-06-01T00:00:00+00:00",
            "openai",
            input_tokens=1_000,
            output_tokens=5_000,
            reasoning_tokens=4_000,
        ),
        {"input": D("0.0011"), "output": D("0.0044"), "reasoning": D("0.0176")},
        D("0.0231"),
        rate_id=5,
    ),
    Vector(
        # exactly 200,000 prompt tokens is still "<= 200k": 200,000 * 1.25 + 1,000 * 10 = 260,000 / 1e6
        "long context: at the boundary, base price",
        (GEMINI_PRO, GEMINI_PRO_LONG),
        ev("gemini-2.5-pro", "2025-07-01T00:00:00+00:00", "google", input_tokens=200_000, output_tokens=1_000),
        {"input": D("0.25"), "output": D("0.01")},
        D("0.26"),
        rate_id=6,
    ),
    Vector(
        # one token more (= the threshold 200,001): the whole call at the long price
        # 200,001 * 2.50 + 1,000 * 15 = 500,002.5 + 15,000 = 515,002.5 / 1e6
        "long context: at the threshold, long price",
        (GEMINI_PRO, GEMINI_PRO_LONG),
        ev("gemini-2.5-pro", "2025-07-01T00:00:00+00:00", "google", input_tokens=200_001, output_tokens=1_000),
        {"input": D("0.5000025"), "output": D("0.015")},
        D("0.5150025"),
        rate_id=7,
    ),
    Vector(
        # one microsecond before midnight UTC: the old price. 1,000 * 0.27 + 100 * 1.10 = 270 + 110 = 380 / 1e6
        "price change: last instant before midnight UTC",
        (DEEPSEEK_V3, DEEPSEEK_V31),
        ev("deepseek-chat", "2025-09-04T23:59:59.999999+00:00", "deepseek", input_tokens=1_000, output_tokens=100),
        {"input": D("0.00027"), "output": D("0.00011")},
        D("0.00038"),
        rate_id=8,
    ),
    Vector(
        # midnight UTC exactly: the new price. 1,000 * 0.56 + 100 * 1.68 = 560 + 168 = 728 / 1e6
        "price change: midnight UTC",
        (DEEPSEEK_V3, DEEPSEEK_V31),
        ev("deepseek-chat", "2025-09-05T00:00:00+00:00", "deepseek", input_tokens=1_000, output_tokens=100),
        {"input": D("0.00056"), "output": D("0.000168")},
        D("0.000728"),
        rate_id=9,
    ),
    Vector(
        # 00:30 at +01:00 is 23:30 UTC the day before: still the old price (380 / 1e6)
        "price change: local midnight is not UTC midnight",
        (DEEPSEEK_V3, DEEPSEEK_V31),
        ev("deepseek-chat", "2025-09-05T00:30:00+01:00", "deepseek", input_tokens=1_000, output_tokens=100),
        {"input": D("0.00027"), "output": D("0.00011")},
        D("0.00038"),
        rate_id=8,
    ),
    Vector(
        # org discount -10 % from 2025-03-01: gpt-4o input 2.50 -> 2.25, output 10 -> 9.
        # 1,000,000 * 2.25 + 100,000 * 9 = 2.25 + 0.9 = 3.15
        "org discount",
        (GPT_4O,),
        ev("gpt-4o", "2025-03-01T00:00:00+00:00", "openai", input_tokens=1_000_000, output_tokens=100_000),
        {"input": D("2.25"), "output": D("0.9")},
        D("3.15"),
        rate_id=1,
        adjustments=(Adjustment("acme", at("2025-03-01T00:00:00+00:00"), D("-10")),),
    ),
    Vector(
        # the same usage a second before the discount starts: 2.50 + 1.00 = 3.50
        "org discount not yet in force",
        (GPT_4O,),
        ev("gpt-4o", "2025-02-28T23:59:59+00:00", "openai", input_tokens=1_000_000, output_tokens=100_000),
        {"input": D("2.5"), "output": D("1")},
        D("3.5"),
        rate_id=1,
        adjustments=(Adjustment("acme", at("2025-03-01T00:00:00+00:00"), D("-10")),),
    ),
    Vector(
        # markup +5 %: 2.50 -> 2.625, 10 -> 10.5: 2.625 + 1.05 = 3.675
        "org markup",
        (GPT_4O,),
        ev("gpt-4o", "2025-05-01T00:00:00+00:00", "openai", input_tokens=1_000_000, output_tokens=100_000),
        {"input": D("2.625"), "output": D("1.05")},
        D("3.675"),
        rate_id=1,
        adjustments=(Adjustment("acme", at("2025-03-01T00:00:00+00:00"), D("5")),),
    ),
    Vector(
        # no rate for this model: unpriced (never $0)
        "unknown model",
        (GPT_4O, MISTRAL_MEDIUM),
        ev("magistral-medium-2509", "2025-10-01T00:00:00+00:00", "mistral", input_tokens=10_000, output_tokens=2_000),
        None,
        None,
    ),
    Vector(
        # Mistral Medium 3 via the pattern 'mistral-medium*': 10,000 * 0.4 + 2,000 * 2 = 4,000 + 4,000 = 8,000 / 1e6
        "mistral medium by prefix",
        (GPT_4O, MISTRAL_MEDIUM),
        ev("mistral-medium-2508", "2025-10-01T00:00:00+00:00", "mistral", input_tokens=10_000, output_tokens=2_000),
        {"input": D("0.004"), "output": D("0.004")},
        D("0.008"),
        rate_id=10,
    ),
    Vector(
        # a batch-tier event with no batch row is unpriced, never billed at the standard price
        "batch tier without a batch rate",
        (GPT_4O,),
        ev("gpt-4o", "2025-03-10T12:00:00+00:00", "openai", input_tokens=1_000, output_tokens=10, service_tier="batch"),
        None,
        None,
    ),
    Vector(
        # exactness: 0.1234567 per million, 3 tokens: 0.3703701 / 1e6 = 0.0000003703701 (13 places, kept)
        "seven decimal places kept",
        (Rate(11, "acme-ai", "tiny", at("2025-01-01T00:00:00+00:00"), D("0.1234567"), D("0.0000001")),),
        ev("tiny", "2025-02-01T00:00:00+00:00", "acme-ai", input_tokens=3, output_tokens=7),
        {"input": D("0.0000003703701"), "output": D("0.0000000000007")},
        D("0.0000003703708"),
        rate_id=11,
    ),
]


# --- helpers to run vectors through the database ------------------------------------------------------

RATE_INSERT = """
INSERT INTO rates (rate_id, org_id, provider, model, effective_from, currency, service_tier, min_input_tokens,
                   price_input, price_cached_input, price_cache_write, price_cache_write_1h, price_output,
                   price_reasoning, source)
OVERRIDING SYSTEM VALUE
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'test')
"""

BATCH_COLUMNS = (
    "event_id",
    "org_id",
    "provider",
    "model",
    "service_tier",
    "occurred_at",
    "usage_month",
    "billing_month",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "output_tokens",
    "reasoning_tokens",
)


def load_rates(conn: Any, rates: Any) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            RATE_INSERT,
            [
                (
                    r.rate_id,
                    r.org_id,
                    r.provider,
                    r.model,
                    r.effective_from,
                    r.currency,
                    r.service_tier,
                    r.min_input_tokens,
                    r.price_input,
                    r.price_cached_input,
                    r.price_cache_write,
                    r.price_cache_write_1h,
                    r.price_output,
                    r.price_reasoning,
                )
                for r in rates
            ],
        )


def load_adjustments(conn: Any, adjustments: Any) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO org_adjustments (org_id, effective_from, percent) VALUES (%s, %s, %s)",
            [(a.org_id, a.effective_from, a.percent) for a in adjustments],
        )


def load_batch(conn: Any, events: Any, table: str = "batch") -> str:
    """A temp table LIKE events holding `events` (dicts as built by `ev`), ids e0, e1, ..."""
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(f"CREATE TEMP TABLE {table} (LIKE events INCLUDING DEFAULTS)")
    rows = []
    for i, e in enumerate(events):
        month = e["occurred_at"].date().replace(day=1)
        rows.append(
            (
                f"e{i}",
                e["org_id"],
                e["provider"],
                e["model"],
                e["service_tier"],
                e["occurred_at"],
                month,
                month,
                e["input_tokens"],
                e["cached_input_tokens"],
                e["cache_write_tokens"],
                e["cache_write_1h_tokens"],
                e["output_tokens"],
                e["reasoning_tokens"],
            )
        )
    with conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(BATCH_COLUMNS)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    return table


def read_batch(conn: Any, table: str = "batch") -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT * FROM {table} ORDER BY substr(event_id, 2)::int")
        return cur.fetchall()
