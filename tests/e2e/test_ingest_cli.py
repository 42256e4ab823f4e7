"""`usagebill ingest FILE.jsonl` and `usagebill spool replay` as a user runs them (subprocess, real Redis)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.publish_support import event, queued_event_ids, queued_jobs

pytestmark = pytest.mark.redis

USAGEBILL = [sys.executable, "-m", "worker.cli"]


def usagebill(args: list[str], env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*USAGEBILL, *args], check=False, env=env, input=stdin, capture_output=True, text=True, timeout=60
    )


def good_lines(n: int, start: int = 0) -> list[str]:
    return [event(i).model_dump_json() for i in range(start, start + n)]


def test_ingest_publishes_valid_lines_and_reports_bad_ones(
    cli_env: dict[str, str], tmp_path: Path, rconn: redis.Redis
) -> None:
    good = good_lines(4)
    no_id = json.loads(good[0])
    del no_id["event_id"]
    bad_id = {**json.loads(good[0]), "event_id": "has space"}
    negative = json.loads(good[1])
    negative["event_id"] = "ev_negative"
    negative["usage"]["input_tokens"] = -1
    lines = [
        good[0],  # 1
        "{not json",  # 2
        json.dumps(no_id),  # 3
        good[1],  # 4
        "",  # 5: blank, ignored
        json.dumps(bad_id),  # 6
        json.dumps(negative),  # 7
        "[1, 2]",  # 8
        good[2],  # 9
        good[3],  # 10
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = usagebill(["ingest", str(path)], cli_env)
    assert result.returncode == 4, result.stderr
    assert json.loads(result.stdout) == {
        "lines": 9,
        "valid": 4,
        "rejected": 5,
        "published": 4,
        "spooled": 0,
        "dropped": 0,
    }
    rejected = [line for line in result.stderr.splitlines() if ": rejected: " in line]
    assert [line.split(":")[1] for line in rejected] == ["2", "3", "6", "7", "8"]
    assert "not JSON" in rejected[0]
    assert "no event_id" in rejected[1]
    assert "invalid event_id" in rejected[2]
    assert "usage.input_tokens" in rejected[3]
    assert "not a JSON object" in rejected[4]
    # the jobs carry each valid line's text exactly as it was in the file
    texts = [t for job in queued_jobs(rconn) for t in job.args[0]]
    assert texts == good


def test_importing_a_file_twice_publishes_the_same_event_ids(
    cli_env: dict[str, str], tmp_path: Path, rconn: redis.Redis
) -> None:
    path = tmp_path / "backfill.jsonl"
    path.write_text("\n".join(good_lines(30)) + "\n")
    first = usagebill(["ingest", str(path)], cli_env)
    assert first.returncode == 0, first.stderr
    ids_first = queued_event_ids(rconn)
    rconn.delete("rq:queue:usagebill")
    second = usagebill(["ingest", str(path)], cli_env)
    assert second.returncode == 0, second.stderr
    ids_second = queued_event_ids(rconn)
    # no id is invented on the way: the worker's dedup turns the second import into a no-op
    assert ids_first == ids_second == [f"ev_pub_{i:06d}" for i in range(30)]


def test_ingest_cuts_the_file_into_bounded_batches(cli_env: dict[str, str], tmp_path: Path, rconn: redis.Redis) -> None:
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(good_lines(25)) + "\n")
    result = usagebill(["ingest", str(path)], {**cli_env, "USAGEBILL_BATCH_SIZE": "10"})
    assert result.returncode == 0, result.stderr
    assert [len(job.args[0]) for job in queued_jobs(rconn)] == [10, 10, 5]


def test_ingest_reads_standard_input(cli_env: dict[str, str], rconn: redis.Redis) -> None:
    result = usagebill(["ingest", "-"], cli_env, stdin="\n".join(good_lines(3)) + "\n")
    assert result.returncode == 0, result.stderr
    assert queued_event_ids(rconn) == ["ev_pub_000000", "ev_pub_000001", "ev_pub_000002"]


def test_ingest_without_redis_fails_with_one_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text(good_lines(1)[0] + "\n")
    result = usagebill(["ingest", str(path)], {**cli_env, "REDIS_URL": "redis://:secret@127.0.0.1:1/0"})
    assert result.returncode == 1
    assert result.stderr.startswith("usagebill: error: Redis at")
    assert "secret" not in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_ingest_of_a_missing_file_fails_with_one_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = usagebill(["ingest", str(tmp_path / "nope.jsonl")], cli_env)
    assert result.returncode == 1
    assert "cannot read" in result.stderr
    assert "Traceback" not in result.stderr


def test_spool_replay_command(cli_env: dict[str, str], tmp_path: Path, rconn: redis.Redis) -> None:
    spool = Path(cli_env["USAGEBILL_SPOOL_DIR"])
    spool.mkdir(parents=True)
    (spool / "spool-99-aa.jsonl").write_text("\n".join(good_lines(3)) + "\n" + good_lines(1, 3)[0][:40])
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "spool-98-bb.jsonl").write_text(good_lines(1, 10)[0] + "\n")

    result = usagebill(["spool", "replay"], cli_env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "files": 1,
        "events": 3,
        "torn_lines": 1,
        "bad_lines": 0,
        "locked_files": 0,
        "failed_files": 0,
    }
    assert list(spool.iterdir()) == []
    result = usagebill(["spool", "replay", "--dir", str(other)], cli_env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["events"] == 1
    assert queued_event_ids(rconn) == ["ev_pub_000000", "ev_pub_000001", "ev_pub_000002", "ev_pub_000010"]


@pytest.mark.slow
@pytest.mark.db
def test_importing_a_file_twice_is_a_no_op_once_ingested(
    cli_env: dict[str, str], tmp_path: Path, conn: psycopg.Connection[Any]
) -> None:
    path = tmp_path / "import.jsonl"
    path.write_text("\n".join(good_lines(20)) + "\n")
    for _ in range(2):
        result = usagebill(["ingest", str(path)], cli_env)
        assert result.returncode == 0, result.stderr
    result = usagebill(["worker", "--burst"], cli_env)
    assert result.returncode == 0, result.stderr
    events = conn.execute("SELECT count(*), count(DISTINCT event_id) FROM events").fetchone()
    assert events == (20, 20)
