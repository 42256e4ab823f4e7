"""The HTML invoice: rendered from the snapshot, opened in headless Chromium, screenshotted."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from billing.settings import Settings
from tests.integration.invoices_util import add_rate, cli, ev, ingest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: set USAGEBILL_TEST_ARTIFACTS=DIR to keep the screenshots for a person (or CI) to look at
ARTIFACTS = os.environ.get("USAGEBILL_TEST_ARTIFACTS")


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.slow
def test_html_invoice_renders_in_chromium(
    conn: psycopg.Connection[Any], settings: Settings, cli_env: dict[str, str], tmp_path: Path
) -> None:
    if CHROMIUM is None:
        message = "chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    add_rate(conn, price_in="2.5", cached="1.25", price_out="10")
    add_rate(conn, model="claude-x", price_in="3", price_out="15")
    ingest(
        settings,
        [
            ev("a1", "2026-01-05T00:00:00Z", input_tokens=1_200_000, cached=200_000, output=80_000, reasoning=20_000),
            ev("a2", "2026-01-06T00:00:00Z", model="claude-x", input_tokens=400_000, output=30_000),
            ev("b1", "2026-01-07T00:00:00Z", org_id="beta & <co>", input_tokens=1000, output=10),
        ],
    )
    cli(cli_env, "invoice", "close", "--month", "2026-01")
    ingest(settings, [ev("late", "2026-01-30T00:00:00Z", input_tokens=300_000, output=5_000)])  # an adjustment
    out = tmp_path / "html"
    cli(cli_env, "invoice", "export", "--month", "2026-02", "--format", "html", "--output", str(out))
    cli(cli_env, "invoice", "export", "--month", "2026-01", "--format", "html", "--output", str(tmp_path / "jan"))
    files = sorted(p.name for p in (tmp_path / "jan").iterdir())
    assert files[0] == "acme-2026-01.html" and files[1].startswith("beta____co_") and len(files) == 2
    jan = (tmp_path / "jan" / "acme-2026-01.html").read_text()
    assert "1,000,000" in jan and "finalized" in jan and '<td class="num">2.50</td>' in jan
    assert "&lt;co&gt;" in (tmp_path / "jan" / files[1]).read_text()  # escaped, never raw HTML
    feb = (out / "acme-2026-02.html").read_text()
    assert "Adjustments" in feb and "2026-01" in feb and "DRAFT" in feb

    for name, page in (("jan", tmp_path / "jan" / "acme-2026-01.html"), ("feb", out / "acme-2026-02.html")):
        png = tmp_path / f"{name}.png"
        subprocess.run(
            [
                CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={png}",
                "--window-size=1200,1600", page.as_uri(),
            ],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        data = png.read_bytes()
        assert _png_size(data) == (1200, 1600)
        assert len(data) > 20_000, "a blank page compresses to a few kilobytes"
        if ARTIFACTS:
            Path(ARTIFACTS).mkdir(parents=True, exist_ok=True)
            shutil.copy(png, Path(ARTIFACTS) / f"invoice-{name}.png")
