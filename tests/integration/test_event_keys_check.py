"""The database's own check of event ids (event_keys) accepts exactly what the wire format accepts."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from producer.event import EVENT_ID_RE

CASES = ["a", "A" * 128, "A" * 129, "", "ev_01:x.y-z", "ab c", "é", "a\n", "a/b", "x" * 127 + "é", "0"]


@pytest.mark.parametrize("event_id", CASES)
def test_event_keys_check_matches_the_wire_format(conn: psycopg.Connection[Any], event_id: str) -> None:
    accepted = EVENT_ID_RE.fullmatch(event_id) is not None
    try:
        with conn.transaction():
            conn.execute(
                "INSERT INTO event_keys (event_id, payload_hash, occurred_at) VALUES (%s, '\\x00', now())", (event_id,)
            )
    except psycopg.errors.CheckViolation as exc:
        assert not accepted, f"{event_id!r} is a valid event id but the database refused it: {exc}"
    else:
        assert accepted, f"{event_id!r} is not a valid event id but the database took it"
