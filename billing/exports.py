"""Invoice exports: the contract's JSON, CSV for spreadsheets and accounting, printable HTML per invoice.

Every format is rendered from the canonical JSON text of each invoice (the stored snapshot for a closed
month), never from live tables, so the exports of a finalized month are byte-identical every time.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any

import jinja2

from billing.money import format_amount

FORMATS = ("json", "csv", "html")

#: one row per invoice line; invoice fields repeated so each row stands alone in a spreadsheet
CSV_HEADER = (
    "org_id",
    "month",
    "number",
    "status",
    "currency",
    "line_no",
    "original_month",
    "model",
    "category",
    "quantity",
    "unit_price",
    "amount",
    "invoice_total",
)


def render_json(texts: Iterable[str]) -> str:
    """The JSON list of invoices: one canonical invoice object per line; `[]` when there is none."""
    items = list(texts)
    if not items:
        return "[]\n"
    return "[\n" + ",\n".join(items) + "\n]\n"


def render_csv(texts: Iterable[str]) -> str:
    """One CSV row per invoice line (RFC 4180, CRLF); an invoice without lines gets one row with its total."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_HEADER)
    for text in texts:
        inv = json.loads(text)
        head = [inv["org_id"], inv["month"], inv["number"] or "", inv["status"], inv["currency"]]
        if not inv["lines"]:
            writer.writerow([*head, "", "", "", "", "", "", "", inv["total"]])
        for line_no, line in enumerate(inv["lines"], start=1):
            writer.writerow(
                [
                    *head,
                    line_no,
                    line["original_month"] or "",
                    line["model"],
                    line["category"],
                    line["quantity"],
                    line["unit_price"],
                    line["amount"],
                    inv["total"],
                ]
            )
    return out.getvalue()


@dataclass(frozen=True)
class HtmlInvoice:
    """One rendered HTML invoice and the file name it is written under."""

    filename: str
    html: str


@cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("billing", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def render_html(text: str) -> HtmlInvoice:
    """A clean, printable HTML invoice: header, usage lines, adjustments (late usage, re-rating), totals."""
    inv = json.loads(text)
    currency = inv["currency"]
    usage = [line for line in inv["lines"] if line["original_month"] is None]
    adjustments = [line for line in inv["lines"] if line["original_month"] is not None]
    context: dict[str, Any] = {
        "inv": inv,
        "usage": usage,
        "adjustments": adjustments,
        "usage_subtotal": _sum(usage, currency),
        "adjustments_subtotal": _sum(adjustments, currency),
    }
    html = _environment().get_template("invoice.html").render(**context)
    return HtmlInvoice(filename=html_filename(inv["org_id"], inv["month"]), html=html)


def html_filename(org_id: str, month: str) -> str:
    """`<org>-<YYYY-MM>.html`, the org id made safe for any file system (unique: a hash when altered)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", org_id)[:100]
    if safe != org_id or safe.startswith("."):
        safe = f"{safe.lstrip('.')}_{hashlib.sha256(org_id.encode()).hexdigest()[:8]}"
    return f"{safe}-{month}.html"


def _sum(lines: list[dict[str, Any]], currency: str) -> str:
    return format_amount(sum((Decimal(line["amount"]) for line in lines), Decimal(0)), currency)
