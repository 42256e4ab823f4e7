"""Rate tables: validate and import price lists (CSV, the shipped list, genai-prices), list them, report gaps."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from billing.errors import InputError
from billing.sqlfiles import query

#: the CSV header of DESIGN.md, in order; `cache_write_1h` may follow as a last column
REQUIRED_COLUMNS = (
    "provider",
    "model",
    "effective_from",
    "currency",
    "input",
    "cached_input",
    "cache_write",
    "output",
    "reasoning",
    "service_tier",
    "min_input_tokens",
)
#: optional columns: the 1-hour cache-write price, and where/when a price was published
OPTIONAL_COLUMNS = ("cache_write_1h", "source", "source_date")
PRICE_COLUMNS = ("input", "cached_input", "cache_write", "cache_write_1h", "output", "reasoning")
#: tiers that mean "the standard tier" are stored as NULL, as events store them (DESIGN.md)
DEFAULT_TIERS = frozenset({"default", "standard", "auto"})
#: the shipped list of public prices (loaded only by an explicit `rates import --builtin`)
BUILTIN_CSV = "public_rates.csv"
BUILTIN_SOURCE = "usagebill-public-rates.csv"

_CURRENCY = re.compile(r"^[A-Z]{3}$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
#: errors listed in one message at most (the rest are counted)
_MAX_ERRORS = 5


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else value


def _parse_when(value: Any) -> datetime:
    """A date (00:00 UTC), an aware datetime or an RFC 3339 time with offset, as a UTC datetime."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("a time needs an offset (or give a date: 00:00 UTC)")
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(0), UTC)
    text = _text(value) or ""
    if text == "":
        raise ValueError("required")
    try:
        if _DATE.match(text):
            return datetime.combine(date.fromisoformat(text), time(0), UTC)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a date (YYYY-MM-DD) or an RFC 3339 time: {text!r}") from None
    if moment.tzinfo is None:
        raise ValueError(f"a time needs an offset (or give a date: 00:00 UTC): {text!r}")
    return moment.astimezone(UTC)


def _decimal(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        number = value
    else:
        text = str(value).strip()
        try:
            number = Decimal(text)
        except InvalidOperation:
            raise ValueError(f"not a decimal: {text!r}") from None
    if not number.is_finite():
        raise ValueError(f"not a finite decimal: {value!r}")
    if number < 0:
        raise ValueError(f"must be >= 0: {value!r}")
    return number


class RateRow(BaseModel):
    """One validated rate row (prices per million tokens; None = the documented fallback)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    provider: str
    model: str
    effective_from: datetime
    currency: str
    input: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    output: Decimal
    reasoning: Decimal | None = None
    service_tier: str | None = None
    min_input_tokens: int = 0
    source: str | None = None
    source_date: date | None = None
    org_id: str | None = None

    @field_validator("provider", "model", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        value = _text(value)
        if value == "" or value is None:
            raise ValueError("required")
        if len(value) > 256:
            raise ValueError("longer than 256 characters")
        return value

    @field_validator("model")
    @classmethod
    def _pattern(cls, value: str) -> str:
        if "*" in value[:-1]:
            raise ValueError(f"a model is an exact name or a prefix ending in '*': {value!r}")
        return value

    @field_validator("effective_from", mode="before")
    @classmethod
    def _when(cls, value: Any) -> datetime:
        return _parse_when(value)

    @field_validator("currency", mode="before")
    @classmethod
    def _currency(cls, value: Any) -> Any:
        text = _text(value) or ""
        if not _CURRENCY.match(text):
            raise ValueError(f"not a 3-letter upper-case currency code: {text!r}")
        return text

    @field_validator("input", "output", mode="before")
    @classmethod
    def _required_price(cls, value: Any) -> Decimal:
        if value is None or _text(value) == "":
            raise ValueError("required")
        return _decimal(value)

    @field_validator("cached_input", "cache_write", "cache_write_1h", "reasoning", mode="before")
    @classmethod
    def _optional_price(cls, value: Any) -> Decimal | None:
        if value is None or _text(value) == "":
            return None
        return _decimal(value)

    @field_validator("service_tier", mode="before")
    @classmethod
    def _tier(cls, value: Any) -> Any:
        text = _text(value)
        if text is None or text == "" or str(text).lower() in DEFAULT_TIERS:
            return None
        return text

    @field_validator("min_input_tokens", mode="before")
    @classmethod
    def _threshold(cls, value: Any) -> Any:
        text = _text(value)
        if text is None or text == "":
            return 0
        if isinstance(text, int):
            number = text
        elif re.fullmatch(r"\d+", str(text)):
            number = int(text)
        else:
            raise ValueError(f"not a non-negative integer: {text!r}")
        if number >= 2**63:
            raise ValueError(f"too large: {text!r}")
        return number

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, value: Any) -> Any:
        text = _text(value)
        return None if text == "" else text

    @field_validator("source_date", mode="before")
    @classmethod
    def _source_date(cls, value: Any) -> Any:
        text = _text(value)
        if text is None or text == "":
            return None
        if isinstance(text, date):
            return text
        try:
            return date.fromisoformat(str(text))
        except ValueError:
            raise ValueError(f"not a date (YYYY-MM-DD): {text!r}") from None

    @property
    def key(self) -> tuple[Any, ...]:
        """The unique key of a rate row (DESIGN.md)."""
        return (
            self.org_id,
            self.provider,
            self.model,
            self.service_tier,
            self.min_input_tokens,
            self.currency,
            self.effective_from,
        )

    @property
    def prices(self) -> tuple[Decimal | None, ...]:
        return tuple(getattr(self, c) for c in PRICE_COLUMNS)

    def describe(self) -> str:
        """A short human name of the key, for messages."""
        parts = [f"{self.provider}/{self.model}", self.currency, f"from {self.effective_from:%Y-%m-%d %H:%M:%S}Z"]
        if self.service_tier:
            parts.append(f"tier {self.service_tier}")
        if self.min_input_tokens:
            parts.append(f">= {self.min_input_tokens} input tokens")
        if self.org_id:
            parts.append(f"org {self.org_id}")
        return " ".join(parts)


@dataclass(frozen=True)
class ImportResult:
    """What an import did: rows added, rows already present with the same prices."""

    inserted: int
    unchanged: int


def _error(line: int, column: str | None, message: str) -> str:
    return f"line {line}, column {column}: {message}" if column else f"line {line}: {message}"


def _raise(errors: Sequence[str], where: str) -> None:
    shown = "; ".join(errors[:_MAX_ERRORS])
    more = f" (and {len(errors) - _MAX_ERRORS} more)" if len(errors) > _MAX_ERRORS else ""
    raise InputError(f"{where}: nothing imported: {shown}{more}")


def parse_csv(
    text: str, *, where: str = "rates", org_id: str | None = None, source: str | None = None
) -> list[tuple[int, RateRow]]:
    """Validate a whole rates CSV: every row or an InputError naming each bad line and column."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header_line: list[str] | None = None
    for header_line in reader:
        if any(cell.strip() for cell in header_line):
            break
    if not header_line:
        raise InputError(f"{where}: empty file (expected the header {','.join(REQUIRED_COLUMNS)})")
    header = [h.strip().lstrip("\ufeff").lower() for h in header_line]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    dupes = sorted({c for c in header if header.count(c) > 1})
    if missing or unknown or dupes:
        problems = []
        if missing:
            problems.append(f"missing column(s) {', '.join(missing)}")
        if unknown:
            problems.append(f"unknown column(s) {', '.join(unknown)}")
        if dupes:
            problems.append(f"repeated column(s) {', '.join(dupes)}")
        raise InputError(
            f"{where}: line {reader.line_num}: bad header: {'; '.join(problems)} "
            f"(expected {','.join(REQUIRED_COLUMNS)}[,cache_write_1h])"
        )
    rows: list[tuple[int, RateRow]] = []
    errors: list[str] = []
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append(_error(reader.line_num, None, f"unreadable CSV: {exc}"))
            break
        line = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            errors.append(_error(line, None, f"{len(cells)} cells, the header has {len(header)}"))
            continue
        record: dict[str, Any] = dict(zip(header, cells, strict=True))
        record["org_id"] = org_id
        if source is not None and not record.get("source"):
            record["source"] = source
        try:
            rows.append((line, RateRow.model_validate(record)))
        except ValidationError as exc:
            for err in exc.errors():
                column = str(err["loc"][0]) if err["loc"] else None
                message = str(err["msg"]).removeprefix("Value error, ")
                errors.append(_error(line, column, message))
    if errors:
        _raise(errors, where)
    if not rows:
        raise InputError(f"{where}: no rate rows after the header")
    return rows


def check_duplicates(rows: Sequence[tuple[int, RateRow]], where: str) -> list[tuple[int, RateRow]]:
    """Drop exact repeats of a key; a key repeated with other prices is an error."""
    seen: dict[tuple[Any, ...], tuple[int, RateRow]] = {}
    errors: list[str] = []
    unique: list[tuple[int, RateRow]] = []
    for line, row in rows:
        first = seen.get(row.key)
        if first is None:
            seen[row.key] = (line, row)
            unique.append((line, row))
        elif first[1].prices != row.prices:
            errors.append(_error(line, None, f"{row.describe()} repeats line {first[0]} with other prices"))
    if errors:
        _raise(errors, where)
    return unique


def import_rows(
    conn: psycopg.Connection[Any],
    rows: Sequence[tuple[int, RateRow]],
    *,
    where: str,
    default_source: str,
) -> ImportResult:
    """Import validated rows atomically: all of them, or none when any key exists with other prices.

    An existing key with the same prices is left alone (a re-import is a no-op). Runs in its own
    transaction (or a savepoint of the caller's) and locks out concurrent imports, not pricing.
    """
    rows = check_duplicates(rows, where)
    with conn.transaction():
        conn.execute(query("rates", "lock_rates"))
        conn.execute(query("rates", "create_import"))
        with conn.cursor() as cur:
            with cur.copy(query("rates", "copy_import")) as copy:
                for line, r in rows:
                    copy.write_row(
                        (
                            line,
                            r.org_id,
                            r.provider,
                            r.model,
                            r.effective_from,
                            r.currency,
                            r.service_tier,
                            r.min_input_tokens,
                            r.input,
                            r.cached_input,
                            r.cache_write,
                            r.cache_write_1h,
                            r.output,
                            r.reasoning,
                            r.source or default_source,
                            r.source_date,
                        )
                    )
            conflicts = cur.execute(query("rates", "import_conflicts")).fetchall()
            if conflicts:
                by_line = dict(rows)
                errors = [
                    _error(line, None, f"{by_line[line].describe()} exists already (rate {rate_id}) with other prices")
                    for line, rate_id in conflicts
                ]
                errors.append("a published rate is never edited: add a row with a later effective_from")
                _raise(errors, where)
            inserted = cur.execute(query("rates", "insert_import")).rowcount
        conn.execute(query("rates", "drop_import"))
        if inserted:
            # fresh statistics, so that pricing plans see a table of this size (a bulk import can
            # turn a handful of rows into thousands before autovacuum notices)
            conn.execute(query("rates", "analyze_rates"))
    return ImportResult(inserted=inserted, unchanged=len(rows) - inserted)


def import_csv(conn: psycopg.Connection[Any], path: Path, *, org_id: str | None = None) -> ImportResult:
    """Import a rates CSV file (whole-file validation; nothing imported on any error)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text: {exc.reason}") from exc
    rows = parse_csv(text, where=str(path), org_id=org_id)
    return import_rows(conn, rows, where=str(path), default_source=f"csv:{path.name}")


def builtin_text() -> str:
    """The shipped CSV of public list prices."""
    return resources.files("billing").joinpath("data", BUILTIN_CSV).read_text(encoding="utf-8")


def import_builtin(conn: psycopg.Connection[Any]) -> ImportResult:
    """Import the shipped public price list (each row carries its source page and date)."""
    rows = parse_csv(builtin_text(), where=BUILTIN_SOURCE)
    return import_rows(conn, rows, where=BUILTIN_SOURCE, default_source=BUILTIN_SOURCE)


def list_rates(
    conn: psycopg.Connection[Any],
    *,
    model: str | None = None,
    provider: str | None = None,
    org_id: str | None = None,
) -> list[dict[str, Any]]:
    """Rate rows, optionally those that could price `model` (exact or by pattern), of a provider or org."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query("rates", "list_rates"), {"model": model, "provider": provider, "org_id": org_id})
        return cur.fetchall()


def missing(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Unpriced usage grouped by provider and model, most events first."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query("rates", "missing"))
        return cur.fetchall()


# --- org pricing settings ---------------------------------------------------------------------------


def set_currency(conn: psycopg.Connection[Any], org_id: str, currency: str) -> None:
    """Set an org's billing currency (pricing then uses rate rows in that currency only)."""
    currency = currency.strip()
    if not _CURRENCY.match(currency):
        raise InputError(f"not a 3-letter upper-case currency code: {currency!r}")
    _check_org(org_id)
    conn.execute(query("rates", "set_currency"), {"org_id": org_id, "currency": currency})


def set_adjustment(
    conn: psycopg.Connection[Any], org_id: str, percent: Decimal, effective_from: datetime, note: str | None = None
) -> bool:
    """Add an org's discount (negative) or markup (positive) in percent from `effective_from`.

    Returns False when the same adjustment exists already; another percent at the same instant is an
    error (an adjustment that has priced events is history: add a later one instead).
    """
    _check_org(org_id)
    if not percent.is_finite() or percent < -100 or percent > 1000:
        raise InputError(f"percent must be between -100 and 1000: {percent}")
    row = conn.execute(
        query("rates", "insert_adjustment"),
        {"org_id": org_id, "effective_from": effective_from, "percent": percent, "note": note},
    ).fetchone()
    if row is None:
        raise InputError("could not record the adjustment")
    existing = Decimal(row[0])
    if existing != percent:
        raise InputError(
            f"org {org_id} has a {existing}% adjustment from {effective_from:%Y-%m-%d %H:%M:%S}Z already; "
            "add one with a later --from instead"
        )
    return bool(row[1])


def org_pricing(conn: psycopg.Connection[Any], org_id: str) -> dict[str, Any]:
    """An org's currency, adjustments and custom rate rows."""
    with conn.cursor(row_factory=dict_row) as cur:
        org = cur.execute(query("rates", "org_row"), {"org_id": org_id}).fetchone()
        adjustments = cur.execute(query("rates", "org_adjustments"), {"org_id": org_id}).fetchall()
    return {
        "org_id": org_id,
        "currency": org["currency"] if org else "USD",
        "known": org is not None,
        "adjustments": adjustments,
        "custom_rates": list_rates(conn, org_id=org_id),
    }


def _check_org(org_id: str) -> None:
    if not 1 <= len(org_id) <= 256:
        raise InputError("an org id has 1 to 256 characters")


def parse_when(text: str) -> datetime:
    """A date (00:00 UTC) or an RFC 3339 time with offset, as a UTC datetime."""
    try:
        return _parse_when(text)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def rows_to_csv(rows: Iterable[RateRow]) -> str:
    """Rate rows as CSV text with the import header (plus cache_write_1h, source, source_date)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
    for r in rows:
        writer.writerow(
            [
                r.provider,
                r.model,
                r.effective_from.date().isoformat()
                if r.effective_from.time() == time(0)
                else r.effective_from.isoformat(),
                r.currency,
                _fmt(r.input),
                _fmt(r.cached_input),
                _fmt(r.cache_write),
                _fmt(r.output),
                _fmt(r.reasoning),
                r.service_tier or "",
                r.min_input_tokens,
                _fmt(r.cache_write_1h),
                r.source or "",
                r.source_date.isoformat() if r.source_date else "",
            ]
        )
    return out.getvalue()


def _fmt_when(value: datetime) -> str:
    return value.date().isoformat() if value.time() == time(0) else value.isoformat()


def _fmt(value: Decimal | None) -> str:
    return "" if value is None else format(value, "f")
