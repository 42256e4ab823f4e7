"""The genai-prices catalogue mapped to usagebill rate rows (imported only on request, with source and date)."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from billing.errors import ConfigError
from billing.rates import RateRow

#: genai-prices provider ids that differ from the names usagebill events use
PROVIDER_NAMES = {"x-ai": "xai", "moonshotai": "moonshot"}
#: genai-prices price keys -> usagebill price columns (per million tokens)
PRICE_KEYS = {
    "input_mtok": "input",
    "cache_read_mtok": "cached_input",
    "cache_write_mtok": "cache_write",
    "cache_write_1h_mtok": "cache_write_1h",
    "output_mtok": "output",
    "output_reasoning_mtok": "reasoning",
}
#: a regex clause that is a literal name followed by a dated suffix becomes a prefix pattern
_DATED_REGEX = re.compile(r"^\^((?:[A-Za-z0-9_/:@-]|\\\.|\.(?![*+?]))+?)(?=\\d|\[0-9\]|\(\?:|\(\\d)")


@dataclass
class CatalogImport:
    """The rows mapped from the catalogue, and what was skipped (with the reason)."""

    version: str
    rows: list[RateRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _catalogue() -> tuple[str, list[Any]]:
    try:
        import genai_prices  # noqa: PLC0415 - an optional extra: imported only when asked for
        from genai_prices import data_snapshot  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigError("the genai-prices catalogue is not installed: pip install 'usagebill[catalog]'") from exc
    return str(genai_prices.__version__), list(data_snapshot.get_snapshot().providers)


def _patterns(clause: Any, notes: list[str], where: str) -> Iterator[str]:
    kind = type(clause).__name__
    if kind == "ClauseEquals":
        yield str(clause.equals)
    elif kind == "ClauseStartsWith":
        yield f"{clause.starts_with}*"
    elif kind == "ClauseOr":
        for sub in clause.or_:
            yield from _patterns(sub, notes, where)
    elif kind == "ClauseAnd":
        # "starts with X and is not Y" (e.g. not a -tts variant): the positive part, as the longer
        # patterns of those variants win by the longest-prefix rule anyway
        positive = [c for c in clause.and_ if type(c).__name__ in {"ClauseEquals", "ClauseStartsWith"}]
        negative = [c for c in clause.and_ if type(c).__name__ == "ClauseRegex" and str(c.regex).startswith("^(?!")]
        if len(positive) == 1 and len(positive) + len(negative) == len(clause.and_):
            notes.append(f"{where}: match {clause!r} approximated by its positive part")
            yield from _patterns(positive[0], notes, where)
        else:
            notes.append(f"{where}: ClauseAnd match not representable, skipped")
    elif kind == "ClauseRegex":
        match = _DATED_REGEX.match(str(clause.regex))
        if match:
            yield match[1].replace("\\.", ".") + "*"
        else:
            notes.append(f"{where}: regex match {clause.regex!r} not representable, skipped")
    else:
        notes.append(f"{where}: {kind} match not representable (exact names and prefixes only), skipped")


def _price_levels(prices: Any) -> dict[int, dict[str, Decimal]] | None:
    """min_input_tokens -> column prices; genai-prices tiers apply above `start`, so a level is start + 1."""
    values = {col: getattr(prices, key, None) for key, col in PRICE_KEYS.items()}
    if values["input"] is None or values["output"] is None:
        return None
    starts = sorted({t.start for v in values.values() if v is not None and hasattr(v, "tiers") for t in v.tiers})
    levels: dict[int, dict[str, Decimal]] = {}
    for level in [0, *(s + 1 for s in starts)]:
        row: dict[str, Decimal] = {}
        for col, value in values.items():
            if value is None:
                continue
            if hasattr(value, "tiers"):
                price = value.base
                for tier in value.tiers:
                    if level > tier.start:
                        price = tier.price
                row[col] = Decimal(price)
            else:
                row[col] = Decimal(value)
        levels[level] = row
    return levels


def _timeline(model: Any, notes: list[str], where: str) -> list[tuple[date | None, Any]]:
    """(start date or None, ModelPrice) in date order; None is the price before any dated change.

    Empty when the model has prices by time of day (off-peak hours): dropping them would bill one of
    the two prices around the clock, so the whole model is skipped (its usage shows as unpriced).
    """
    if not isinstance(model.prices, list):
        return [(None, model.prices)]
    out: list[tuple[date | None, Any]] = []
    for conditional in model.prices:
        constraint = conditional.constraint
        kind = type(constraint).__name__
        if constraint is None:
            out.append((None, conditional.prices))
        elif kind == "StartDateConstraint":
            out.append((constraint.start_date, conditional.prices))
        else:
            notes.append(f"{where}: {kind} prices (e.g. off-peak hours) not representable, model skipped")
            return []
    undated = [p for d, p in out if d is None]
    dated = sorted(((d, p) for d, p in out if d is not None), key=lambda x: x[0])
    # genai-prices: the last matching conditional price wins, the first one is the default
    return ([(None, undated[-1])] if undated else []) + list(dated)


def _in_force(timeline: list[tuple[date | None, Any]], since: datetime) -> list[tuple[datetime, Any]]:
    """The prices in force from `since` on: the one at `since` (re-dated to it) and every later change."""
    out: list[tuple[datetime, Any]] = []
    for start, prices in timeline:
        moment = since if start is None else max(since, datetime.combine(start, time(0), UTC))
        if out and out[-1][0] == moment:
            out[-1] = (moment, prices)  # a later change at or before `since` supersedes the earlier one
        else:
            out.append((moment, prices))
    return out


def _tier(when: dict[str, str]) -> str | None:
    if when == {"processing": "batch"}:
        return "batch"
    if set(when) == {"service_tier"} and when["service_tier"] not in {"default", "standard", "auto"}:
        return when["service_tier"]
    return None


def catalog_rows(
    *, since: datetime, providers: Collection[str] | None = None, today: date | None = None
) -> CatalogImport:
    """Map the installed genai-prices catalogue to rate rows in force from `since` (USD).

    Exact names and prefixes map directly; a regex with a dated suffix becomes a prefix pattern; other
    matchers, time-of-day prices and non-tier request variants are skipped with a note. Tiered prices
    become long-context rows (min_input_tokens = tier start + 1: genai-prices tiers apply above start).
    """
    version, catalogue = _catalogue()
    result = CatalogImport(version=version)
    source = f"genai-prices {version}"
    source_date = today or datetime.now(UTC).date()
    seen: set[tuple[Any, ...]] = set()
    for provider in catalogue:
        name = PROVIDER_NAMES.get(provider.id, provider.id)
        if providers is not None and name not in providers:
            continue
        for model in provider.models:
            where = f"{name}/{model.id}"
            patterns = list(dict.fromkeys(_patterns(model.match, result.notes, where)))
            timeline = _in_force(_timeline(model, result.notes, where), since)
            variants: list[tuple[str | None, Any, date | None]] = [(None, None, None)]
            for variant in model.price_variants or []:
                tier = _tier(variant.when)
                constraint = variant.constraint
                if tier is None or (constraint is not None and type(constraint).__name__ != "StartDateConstraint"):
                    result.notes.append(f"{where}: price variant {variant.when} not representable, skipped")
                    continue
                variants.append((tier, variant.prices, constraint.start_date if constraint else None))
            for tier, overlay, variant_start in variants:
                starts = [m for m, _ in timeline]
                if variant_start is not None:
                    vmoment = max(since, datetime.combine(variant_start, time(0), UTC))
                    starts = sorted({*(m for m in starts if m > vmoment), vmoment})
                for moment in starts:
                    base = [p for m, p in timeline if m <= moment]
                    if not base:
                        continue
                    merged = _merge(base[-1], overlay)
                    levels = _price_levels(merged)
                    if levels is None:
                        result.notes.append(f"{where}: no input and output token price, skipped")
                        break
                    for level, prices in levels.items():
                        for pattern in patterns:
                            key = (name, pattern, tier, level, moment)
                            if key in seen:
                                continue
                            seen.add(key)
                            result.rows.append(
                                RateRow(
                                    provider=name,
                                    model=pattern,
                                    effective_from=moment,
                                    currency="USD",
                                    service_tier=tier,
                                    min_input_tokens=level,
                                    source=source,
                                    source_date=source_date,
                                    **prices,
                                )
                            )
    result.notes = list(dict.fromkeys(result.notes))
    return result


class _Merged:
    """A standard price with a variant's partial prices laid over it (per price key)."""

    def __init__(self, base: Any, overlay: Any) -> None:
        for key in PRICE_KEYS:
            value = getattr(overlay, key, None) if overlay is not None else None
            setattr(self, key, value if value is not None else getattr(base, key, None))


def _merge(base: Any, overlay: Any) -> Any:
    return base if overlay is None else _Merged(base, overlay)
