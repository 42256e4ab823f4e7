"""The CLI's discipline: --help everywhere, one-line reasons, exit codes, redacted credentials."""

from __future__ import annotations

import os
import subprocess

import pytest

COMMANDS = ["migrate", "worker", "ingest", "rates", "reprice", "quota", "invoice", "reconcile", "status", "demo"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["usagebill", *args], check=False, capture_output=True, text=True, env=env or dict(os.environ), timeout=120
    )


def test_help_lists_the_commands() -> None:
    out = run("--help")
    assert out.returncode == 0
    for command in COMMANDS:
        sub = run(command, "--help")
        assert sub.returncode == 0, f"{command}: {sub.stderr}"
        assert "Usage: usagebill " + command in sub.stdout


def test_unknown_command_is_a_usage_error() -> None:
    out = run("no-such-command")
    assert out.returncode == 2
    assert "No such command" in out.stderr


def test_unreachable_database_is_one_line_and_redacted() -> None:
    env = {**os.environ, "DATABASE_URL": "postgresql://bill:s3cret@127.0.0.1:1/nodb"}
    out = run("migrate", env=env)
    assert out.returncode == 1
    assert out.stderr.startswith("usagebill: error: database unreachable")
    assert out.stderr.count("\n") == 1
    assert "s3cret" not in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("bad", ["USAGEBILL_BATCH_SIZE=0", "USAGEBILL_JOB_TIMEOUT=abc"])
def test_invalid_setting_is_one_line(bad: str) -> None:
    name, value = bad.split("=")
    out = run("migrate", env={**os.environ, name: value})
    assert out.returncode == 1
    assert "invalid setting" in out.stderr and out.stderr.count("\n") == 1
