"""The worker exposes Prometheus metrics and writes structured (JSON) logs on standard error."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from billing.settings import Settings
from worker.jobs import enqueue_batch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def event(i: int) -> str:
    return json.dumps(
        {
            "schema_version": 1,
            "event_id": f"obs-{i}",
            "occurred_at": "2026-10-15T12:00:00Z",
            "org_id": "acme",
            "provider": "openai",
            "model": "unknown-model",
            "usage": {
                "input_tokens": 10,
                "cached_input_tokens": 0,
                "cache_write_tokens": 0,
                "output_tokens": 5,
                "reasoning_tokens": 0,
            },
        }
    )


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_and_json_logs(settings: Settings, cli_env: dict[str, str], rconn: redis.Redis) -> None:
    port = free_port()
    env = {**cli_env, "USAGEBILL_METRICS_PORT": str(port), "USAGEBILL_LOG_FORMAT": "json"}
    subprocess.run(["usagebill", "migrate"], env=env, check=True, capture_output=True)
    queue = Queue(settings.queue, connection=rconn, serializer=JSONSerializer)
    enqueue_batch(queue, [event(i) for i in range(5)] + [event(0), "{not json"])
    worker = subprocess.Popen(
        ["usagebill", "worker", "--verbose"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        values: dict[str, float] = {}
        while time.monotonic() < deadline:
            try:
                values = scrape(port)
            except OSError:
                values = {}
            if values.get('usagebill_events_total{outcome="ingested"}') == 5:
                break
            time.sleep(0.3)
        assert values.get('usagebill_events_total{outcome="ingested"}') == 5, values
        assert values['usagebill_events_total{outcome="duplicate"}'] == 1
        assert values['usagebill_events_total{outcome="rejected"}'] == 1
        assert values["usagebill_events_unpriced_total"] == 5
        assert values["usagebill_batch_seconds_count"] == 1
        assert values[f'usagebill_queue_jobs{{queue="{settings.queue}",state="queued"}}'] == 0
    finally:
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err[-2000:]
    assert out == ""  # standard output carries nothing: logs go to standard error
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    done = [rec for rec in lines if rec.get("message") == "batch done"]
    assert len(done) == 1
    assert (done[0]["inserted"], done[0]["duplicates"], done[0]["rejected"]) == (5, 1, 1)
    assert all({"ts", "level", "logger", "message"} <= set(rec) for rec in lines)
