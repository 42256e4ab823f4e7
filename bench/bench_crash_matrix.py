"""The crash matrix at scale (1M events by default): workers, publishers, Redis and Postgres killed mid-run.

Runs the scenario of tests/crash_matrix.py (the CI test runs it at ~100k) on a private redis-server
with append-only persistence and a throwaway migrated database, then prints what was run and what
came out: events, kills, restarts, lost, doubled and the time of each phase. It restarts the local
Postgres cluster once (phase 5): other users of that cluster see their connections cut.

    .venv/bin/python bench/bench_crash_matrix.py [--events 1000000] [--seed 7] [--no-pg-restart]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the scenario lives with the tests

from ingest_env import fresh_db, template_db  # noqa: E402

from tests import crash_matrix  # noqa: E402
from tests.publish_support import RedisServer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="event texts published (duplicates included)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-pg-restart", action="store_true", help="skip the Postgres restart of phase 5")
    args = parser.parse_args()
    with template_db() as tpl, fresh_db(tpl) as url, tempfile.TemporaryDirectory(prefix="crash-matrix-") as tmp:
        server = RedisServer(Path(tmp) / "redis")
        server.start()
        try:
            fig = crash_matrix.run(
                url, server, Path(tmp), args.events, seed=args.seed, pg_restart=not args.no_pg_restart
            )
        finally:
            server.stop()
    out = fig.as_dict()
    print(json.dumps(out, indent=2))
    rate = fig.accepted_events / fig.timings["total"] if fig.timings.get("total") else 0
    print(
        f"events published {fig.texts_published}, accepted {fig.accepted_events} (not accepted: "
        f"{fig.not_accepted}, in killed publishers' memory), kills {fig.worker_kills} workers + "
        f"{fig.publisher_kills} publishers, restarts {fig.redis_restarts} Redis + {fig.postgres_restarts} Postgres, "
        f"lost {fig.lost}, doubled {fig.doubled}, {fig.timings['total']} s ({rate:.0f} accepted events/s overall)"
    )


if __name__ == "__main__":
    main()
