#!/usr/bin/env bash
# Start the local Postgres and Redis when they are not answering (a fresh machine of this kind has
# both installed; they may be stopped). Idempotent; prints what it did on stderr.
set -euo pipefail

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }

if ! pg_up; then
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        echo "starting Postgres" >&2
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
        for _ in $(seq 1 30); do pg_up && break; sleep 1; done
    fi
    pg_up || echo "warning: Postgres is not answering on 127.0.0.1:5432" >&2
fi

if ! redis_up; then
    if command -v redis-server >/dev/null; then
        echo "starting Redis (no persistence: for tests only)" >&2
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
        for _ in $(seq 1 30); do redis_up && break; sleep 0.2; done
    fi
    redis_up || echo "warning: Redis is not answering on 127.0.0.1:6379" >&2
fi
