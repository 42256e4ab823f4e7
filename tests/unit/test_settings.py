"""Settings come from the environment with documented defaults; URLs are redacted in messages."""

from __future__ import annotations

import pytest

from billing.settings import Settings, redact


def test_defaults_are_the_local_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "REDIS_URL", "USAGEBILL_QUEUE"):
        monkeypatch.delenv(name, raising=False)
    s = Settings()
    assert s.database_url.startswith("postgresql://") and "127.0.0.1:5432" in s.database_url
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.queue == "usagebill"
    assert s.invoice_grace.total_seconds() == 24 * 3600


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USAGEBILL_QUEUE", "q2")
    monkeypatch.setenv("USAGEBILL_BATCH_SIZE", "50")
    s = Settings()
    assert (s.queue, s.batch_size) == ("q2", 50)


def test_invalid_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USAGEBILL_BATCH_SIZE", "0")
    with pytest.raises(ValueError, match="USAGEBILL_BATCH_SIZE"):
        Settings()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://bill:s3cret@db.example:5432/x", "postgresql://bill:***@db.example:5432/x"),
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_redact(url: str, expected: str) -> None:
    assert redact(url) == expected
    assert "s3cret" not in redact(url) and ":pw@" not in redact(url)
