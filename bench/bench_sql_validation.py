"""What validating events set-based in SQL would cost, against the worker's Python validation of today.

Issue 5's long-term goal (0.10 of the COPY ceiling) suggests taking the per-event Python work out of the
hot path, "e.g. validated set-based in SQL". On one batch of the ingest bench's events (8000, the size of
the worker's merged transactions) this times, alternated round by round on one Postgres backend:
- today: the worker's `billing.ingest.prepare` (pydantic, canonical JSON, sha256, the typed COPY line;
  CPU of this process, with its side of the COPY) and the COPY of those lines into `ingest_stage` (CPU of
  the backend);
- the raw JSON texts COPYed as they are (the floor of any SQL-side validation), then parsed as jsonb, then
  every field extracted and cast into rows shaped like `ingest_stage` (two forms), then also checked
  against a subset of wire format v1 (bench/bench_sql_validation.sql: each a lower bound of the real work).
The backend's CPU comes from /proc (in clock ticks, 10 ms here: each figure is the mean over the
rounds). The extracted rows are compared with the Python path's, field by field. The backend runs the
ingest's transactions one after another, so what moves onto it is what limits one worker's rate.

    .venv/bin/python bench/bench_sql_validation.py [--events 8000] [--rounds 12]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from bench_ingest import backend_cpu
from ingest_env import event_doc, fresh_db, template_db

from billing import ingest
from billing.db import CONNECT_OPTIONS
from billing.sqlfiles import named_blocks, query

SQL = named_blocks(Path(__file__).with_suffix(".sql").read_text(encoding="utf-8"), "bench/bench_sql_validation.sql")
#: the extraction with the checks: what differs from `extract` is the checks alone
EXTRACT_CHECKED = SQL["extract"] + "\n" + SQL["checks"]
#: the SQL variants: label, the statement after the raw COPY (None: the COPY alone)
VARIANTS: list[tuple[str, str | None]] = [
    ("raw JSON texts COPYed as they are (the floor)", None),
    ("  + each parsed as jsonb", SQL["parse"]),
    ("  + every field extracted into a typed row (->>)", SQL["extract"]),
    ("  + the same with jsonb_to_record", SQL["extract_record"]),
    ("  + extracted and checked (a subset of the rules)", EXTRACT_CHECKED),
]


def make_texts(n: int, seed: int = 11) -> list[str]:
    """n events of the ingest bench's mix (50 orgs x 100 users, 4 models), as published: JSON texts."""
    rng = random.Random(seed)
    return [json.dumps(event_doc(rng, f"ev_{seed}_{i:09d}", 50, 100)) for i in range(n)]


def raw_block(texts: list[str]) -> str:
    """The texts as COPY text lines (position, text), escaped as the ingest escapes its COPY values."""
    return "".join(f"{pos}\t{ingest._copy_text(text)}\n" for pos, text in enumerate(texts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=8000)
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args()
    texts = make_texts(args.events)
    n = len(texts)
    with (
        template_db() as template,
        fresh_db(template) as url,
        psycopg.connect(url, autocommit=True, options=CONNECT_OPTIONS) as conn,
    ):
        ingest.warm(conn)  # ingest_stage, as the worker's sessions have it
        conn.execute(SQL["create"])
        pid = conn.info.backend_pid

        def timed(work: Callable[[], None]) -> tuple[float, float]:
            # (this process's CPU, the backend's CPU), us per event
            p0, b0 = time.process_time(), backend_cpu(pid)
            work()
            return (time.process_time() - p0) * 1e6 / n, (backend_cpu(pid) - b0) * 1e6 / n

        def today() -> None:
            prepared = ingest.prepare(texts)
            with conn.transaction(), conn.cursor().copy(query("ingest", "copy_stage")) as copy:
                copy.write(prepared.block)

        def in_sql(statement: str | None) -> Callable[[], None]:
            def work() -> None:
                block = raw_block(texts)
                with conn.transaction():
                    with conn.cursor().copy(SQL["copy_raw"]) as copy:
                        copy.write(block)
                    if statement is not None:
                        conn.execute(statement)

            return work

        # the extracted rows against the Python path's, once: both in one outer transaction (the inner ones
        # are savepoints, and the stages keep their rows until the outer commit)
        with conn.transaction():
            today()
            in_sql(EXTRACT_CHECKED)()
            row = conn.execute(SQL["differences"]).fetchone()
            differing = int(row[0]) if row is not None else -1

        work = [("today: validated in Python (prepare), typed COPY", today)]
        work += [(label, in_sql(statement)) for label, statement in VARIANTS]
        sums = {label: [0.0, 0.0] for label, _ in work}
        for _ in range(args.rounds):
            for label, job in work:
                client, backend = timed(job)
                sums[label][0] += client / args.rounds
                sums[label][1] += backend / args.rounds

    print(f"{n}-event batches, {args.rounds} rounds alternated; CPU per event (us), mean of the rounds")
    print(f"  {'':52s} {'worker':>8s} {'backend':>8s} {'in all':>8s}")
    for label, (client, backend) in sums.items():
        print(f"  {label:52s} {client:8.2f} {backend:8.2f} {client + backend:8.2f}")
    print(f"  rows extracted and checked in SQL that differ from the Python path's: {differing} of {n}")
    py_client, py_backend = sums[work[0][0]]
    for label, statement in VARIANTS:
        if statement in (SQL["extract"], EXTRACT_CHECKED):
            client, backend = sums[label]
            total = client + backend - py_client - py_backend
            print(
                f"  {label.strip(' +')}: the backend +{backend - py_backend:.2f} us per event (the one transaction "
                f"stream), the worker {client - py_client:+.2f}, in all {total:+.2f}"
            )


if __name__ == "__main__":
    main()
