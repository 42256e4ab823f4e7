"""`usagebill demo`: LLM calls through the real SDKs turned into quotas and invoices, on throwaway services.

The demo never touches a configured billing database: it creates its own database (and borrows an
empty Redis database) on the servers it finds, or starts embedded ones, and removes all of it at the
end. Each step is what a user would run: the `usagebill` commands as subprocesses against the demo's
services, and app code (the `openai` and `anthropic` SDKs wrapped by `producer.instrument`) calling a
local OpenAI/Anthropic-compatible server that streams answers with their usage.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from billing.errors import BillingError
from worker.embedded import demo_services
from worker.fakellm import FakeLLM, FakeModel

#: the demo's customers and their users
ORGS = {"acme": ("alice", "bob", "carol"), "globex": ("dave", "erin"), "initech": ("frank", "grace")}

#: what the local server answers per model: realistic usage shapes, one server without usage reports
DEMO_MODELS: dict[str, FakeModel] = {
    "gpt-4o-mini": FakeModel(
        reply="Sure: here is a short answer to your question.",
        input_tokens=14_500,
        cached_tokens=10_240,
        output_tokens=640,
    ),
    "o3-mini": FakeModel(
        reply="After thinking it through, the answer is 42.",
        input_tokens=2_200,
        output_tokens=9_000,
        reasoning_tokens=7_680,
    ),
    "claude-opus-4-5": FakeModel(
        reply="Happy to help with that request.",
        input_tokens=1_800,
        cached_tokens=20_480,
        cache_write_tokens=10_240,
        output_tokens=1_200,
    ),
    # a self-hosted model behind an OpenAI-compatible server that reports no usage: estimated by tiktoken
    "llama-3.1-8b-instruct": FakeModel(reply="A local model answers without reporting any usage.", report_usage=False),
    # a stream the app abandons midway: still billed, status aborted
    "gpt-4o": FakeModel(
        reply="This long answer is abandoned by the app before it ends", input_tokens=300, output_tokens=40, delay=0.01
    ),
}

#: the self-hosted model's price (the public list has none); everything else comes from the shipped list
DEMO_RATES = (
    "provider,model,effective_from,currency,input,cached_input,cache_write,output,reasoning,"
    "service_tier,min_input_tokens\n"
    "vllm,llama-3.1-8b-instruct,2025-01-01,USD,0.05,,,0.08,,,0\n"
)


@dataclass
class DemoResult:
    """What the demo made: where the invoices are, and the counts it observed."""

    month: str
    calls: int = 0
    denied: int = 0
    published: int = 0
    ingested: int = 0
    invoices: list[Path] = field(default_factory=list)
    quota_table: str = ""
    notes: list[str] = field(default_factory=list)


class DemoError(BillingError):
    """The demo could not complete."""


def _cli(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one `usagebill` command against the demo's services, as a user would."""
    cmd = [sys.executable, "-m", "worker.cli", *args]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    if check and out.returncode not in (0,):
        reason = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise DemoError(f"`usagebill {' '.join(args)}` failed ({out.returncode}): {reason}")
    return out


@contextlib.contextmanager
def _background_worker(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A `usagebill worker` process for the duration of the traffic; SIGTERM lets it finish its batch."""
    with log_path.open("wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "worker"], env=env, stdout=logf, stderr=logf)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _traffic(base_url: str, calls_per_user: int, seed: int) -> list[Callable[[], str]]:
    """The app's LLM calls: (org, user) pairs making OpenAI and Anthropic calls, streamed and not."""
    import anthropic  # noqa: PLC0415  # the demo's app code; only the demo needs the SDKs
    import openai  # noqa: PLC0415

    import producer  # noqa: PLC0415

    rng = random.Random(seed)
    oai = openai.OpenAI(base_url=base_url, api_key="demo", max_retries=0)
    local = openai.OpenAI(base_url=base_url, api_key="demo", max_retries=0)
    claude = anthropic.Anthropic(base_url=base_url.removesuffix("/v1"), api_key="demo", max_retries=0)
    openai_app = producer.instrument(oai, provider="openai")
    local_app = producer.instrument(local, provider="vllm")
    claude_app = producer.instrument(claude, provider="anthropic")
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the answer to everything?"},
    ]

    def reserved(org: str, user: str, tokens: int) -> dict[str, Any] | None:
        """Reserve the call's expected tokens first: past a hard limit the call is not made at all."""
        held = producer.reserve(org, producer.Estimate(tokens=tokens), user_id=user)
        if not held.allowed:
            return None
        return {"org_id": org, "user_id": user, "reservation_id": held.id}

    def chat_stream(org: str, user: str, model: str) -> str:
        ctx = reserved(org, user, 16_000)
        if ctx is None:
            return "denied"
        stream = openai_app.chat.completions.create(model=model, messages=messages, stream=True, usagebill=ctx)
        for _chunk in stream:  # chunks pass through untouched; the usage rides on the last one
            pass
        return "ok"

    def responses_call(org: str, user: str) -> str:
        ctx = reserved(org, user, 16_000)
        if ctx is None:
            return "denied"
        openai_app.responses.create(model="gpt-4o-mini", input="Summarize this in one line.", usagebill=ctx)
        return "ok"

    def claude_stream(org: str, user: str) -> str:
        ctx = reserved(org, user, 40_000)
        if ctx is None:
            return "denied"
        stream = claude_app.messages.create(
            model="claude-opus-4-5",
            max_tokens=256,
            stream=True,
            messages=[{"role": "user", "content": "Hello, Claude"}],
            usagebill=ctx,
        )
        for _event in stream:
            pass
        return "ok"

    def local_call(org: str, user: str) -> str:
        for _chunk in local_app.chat.completions.create(
            model="llama-3.1-8b-instruct", messages=messages, stream=True, usagebill={"org_id": org, "user_id": user}
        ):
            pass
        return "ok"

    def aborted_stream(org: str, user: str) -> str:
        stream = openai_app.chat.completions.create(
            model="gpt-4o", messages=messages, stream=True, usagebill={"org_id": org, "user_id": user}
        )
        for i, _chunk in enumerate(stream):
            if i == 2:
                break  # the user closed the tab: the call is still billed, status aborted
        stream.close()
        return "ok"

    calls: list[Callable[[], str]] = []
    for org, users in ORGS.items():
        for user in users:
            for _ in range(calls_per_user):
                kind = rng.random()
                if kind < 0.40:
                    calls.append(functools.partial(chat_stream, org, user, "gpt-4o-mini"))
                elif kind < 0.60:
                    calls.append(functools.partial(chat_stream, org, user, "o3-mini"))
                elif kind < 0.80:
                    calls.append(functools.partial(claude_stream, org, user))
                elif kind < 0.92:
                    calls.append(functools.partial(responses_call, org, user))
                else:
                    calls.append(functools.partial(local_call, org, user))
    calls.append(functools.partial(aborted_stream, "initech", "frank"))
    rng.shuffle(calls)
    return calls


def _count_events(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM event_keys").fetchone()
    return int(row[0]) if row else 0


def run_demo(
    output_dir: Path,
    *,
    calls_per_user: int = 12,
    embedded_only: bool = False,
    seed: int = 7,
    console: Console | None = None,
) -> DemoResult:
    """Run the whole demo; returns what it made. Progress goes to `console` (standard error)."""
    from producer import publisher, quota  # noqa: PLC0415

    err = console or Console(stderr=True)
    month = datetime.now(UTC).strftime("%Y-%m")
    result = DemoResult(month=month)
    output_dir = output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="usagebill-demo-")))
        services = stack.enter_context(
            demo_services(
                os.environ.get("DATABASE_URL"),
                os.environ.get("REDIS_URL"),
                embedded_only=embedded_only,
                log=lambda m: err.print(f"[dim]{m}[/dim]"),
            )
        )
        result.notes.extend(services.notes)
        for note in services.notes:
            err.print(f"[bold]•[/bold] {note}")
        env = {
            **os.environ,
            "DATABASE_URL": services.database_url,
            "REDIS_URL": services.redis_url,
            "USAGEBILL_QUEUE": "usagebill",
            "USAGEBILL_SPOOL_DIR": str(tmp / "spool"),
        }

        err.print("[bold]•[/bold] migrating the schema and loading prices (the shipped public list + one local model)")
        _cli(env, "migrate")
        _cli(env, "rates", "import", "--builtin")
        (tmp / "demo-rates.csv").write_text(DEMO_RATES)
        _cli(env, "rates", "import", str(tmp / "demo-rates.csv"))
        _cli(env, "org", "discount", "globex", "-10", "--from", "2025-01-01", "--note", "demo: annual contract")
        _cli(env, "quota", "set", "--org", "acme", "--tokens", "400000", "--hard")
        _cli(env, "quota", "set", "--org", "globex", "--money", "0.50", "--soft", "--thresholds", "50,80,100")
        _cli(env, "quota", "set", "--org", "initech", "--tokens", "5000000", "--soft")
        _cli(env, "quota", "rebuild-mirror")  # the Redis mirror that app code checks in well under 1 ms

        server = stack.enter_context(FakeLLM(models=DEMO_MODELS))
        err.print(f"[bold]•[/bold] a local OpenAI/Anthropic-compatible server streams answers at {server.url}")
        pub = publisher.configure(
            redis_url=services.redis_url,
            queue="usagebill",
            mode="buffered",
            spool_dir=str(tmp / "spool"),
            flush_interval=0.2,
        )
        stack.callback(pub.close)
        quota.configure(quota.QuotaClient(config=quota.QuotaConfig(REDIS_URL=services.redis_url)))
        stack.callback(quota.configure, None)

        calls = _traffic(server.url, calls_per_user, seed)
        result.calls = len(calls)
        with _background_worker(env, tmp / "worker.log") as worker_proc:
            progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
            )
            with progress:
                task = progress.add_task("LLM calls (openai + anthropic SDKs)", total=len(calls))
                with ThreadPoolExecutor(max_workers=4) as pool:
                    for outcome in pool.map(lambda call: call(), calls):
                        result.denied += outcome == "denied"
                        progress.advance(task)
                pub.flush(timeout=30)
                result.published = pub.stats()["published"]
                ingest = progress.add_task("events priced and aggregated by the worker", total=result.published)
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    result.ingested = _count_events(services.database_url)
                    progress.update(ingest, completed=min(result.ingested, result.published))
                    if result.ingested >= result.published or worker_proc.poll() is not None:
                        break
                    time.sleep(0.2)
            if result.ingested < result.published:
                tail = (tmp / "worker.log").read_text(errors="replace").strip().splitlines()[-5:]
                raise DemoError(
                    f"the worker ingested {result.ingested} of {result.published} events; its log ends: "
                    + " | ".join(tail)
                )
        err.print(
            f"[bold]•[/bold] {result.calls} calls made, {result.denied} denied by a hard limit, "
            f"{result.ingested} events billed"
        )

        result.quota_table = _cli(env, "quota", "show").stdout
        close = _cli(env, "invoice", "close", "--month", month, "--force")
        for line in close.stderr.strip().splitlines():
            err.print(f"[dim]{line}[/dim]")
        json_path, csv_path, html_dir = output_dir / "invoices.json", output_dir / "invoices.csv", output_dir / "html"
        _cli(env, "invoice", "export", "--month", month, "--format", "json", "--output", str(json_path))
        _cli(env, "invoice", "export", "--month", month, "--format", "csv", "--output", str(csv_path))
        _cli(env, "invoice", "export", "--month", month, "--format", "html", "--output", str(html_dir))
        result.invoices = [json_path, csv_path, *sorted(html_dir.glob("*.html"))]
        recon = _cli(env, "reconcile", check=False)
        if recon.returncode != 0:
            raise DemoError(f"reconcile found drift:\n{recon.stdout}")
        err.print("[bold]•[/bold] reconcile: events, aggregates, invoice lines and the quota mirror agree")
    return result


def main_demo(output: Path, calls_per_user: int, embedded_only: bool) -> DemoResult:
    """The CLI's entry: run the demo, print the quota table and where the invoices are (stdout)."""
    err = Console(stderr=True)
    result = run_demo(output, calls_per_user=calls_per_user, embedded_only=embedded_only, console=err)
    out = Console()
    out.print(f"[bold]Quotas for {result.month}[/bold]")
    print(result.quota_table, end="" if result.quota_table.endswith("\n") else "\n")
    out.print(f"[bold]Invoices for {result.month}[/bold] (finalized):")
    for path in result.invoices:
        print(f"  {path}")
    err.print("[dim]the demo's databases and servers were removed[/dim]")
    return result
