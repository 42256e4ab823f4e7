"""Job metrics: a carried job counts its own events; a job that found its result stored counts none."""

from __future__ import annotations

from worker import observability


def _sample(name: str, labels: dict[str, str]) -> float:
    return observability.REGISTRY.get_sample_value(name, labels) or 0.0


def _ingested() -> float:
    return _sample("usagebill_events_total", {"outcome": "ingested"})


def _batches(result: str) -> float:
    return _sample("usagebill_batches_total", {"result": result})


def test_a_carried_job_counts_its_own_events() -> None:
    before, merged = _ingested(), _batches("merged")
    observability.record_batch({"received": 5, "inserted": 5, "merged_into": "job-a"}, 0.001)
    assert _ingested() == before + 5 and _batches("merged") == merged + 1


def test_a_job_that_found_its_result_stored_counts_no_events_again() -> None:
    before, again = _ingested(), _batches("already_committed")
    observability.record_batch({"received": 5, "inserted": 5, "already_committed": True}, 0.001)
    assert _ingested() == before and _batches("already_committed") == again + 1
