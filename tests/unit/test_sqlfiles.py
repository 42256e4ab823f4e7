"""Named SQL blocks: how a `.sql` file is cut into the statements the code runs by name."""

from __future__ import annotations

import pytest

from billing.sqlfiles import named_blocks, queries


def test_blocks_are_cut_at_name_lines_and_stripped() -> None:
    text = "-- header comment\n-- name: first\nSELECT 1\n\n-- name: second_2\n-- why\nSELECT 2;\n"
    assert named_blocks(text, "x.sql") == {"first": "SELECT 1", "second_2": "-- why\nSELECT 2;"}


def test_a_name_defined_twice_is_an_error_naming_the_file() -> None:
    with pytest.raises(ValueError, match=r"x\.sql: block 'a' defined twice"):
        named_blocks("-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n", "x.sql")


def test_the_shipped_files_load_through_the_same_cut() -> None:
    assert "claim_new" in queries("ingest")
    assert all(body for body in queries("ingest").values())
