"""The normalized usage of one LLM call: one shape for every provider (DESIGN.md contract)."""

from __future__ import annotations

from decimal import Decimal

from pydantic import BaseModel, ConfigDict


class Usage(BaseModel):
    """Token counts as the provider reported them, normalized; parts are nested, never overlapping.

    Extraction reports what the provider said, even when it breaks the subset rules: the repair
    applies only when usage becomes an event (`producer.event.repair_usage`).
    """

    model_config = ConfigDict(frozen=True)

    input_tokens: int
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int
    reasoning_tokens: int = 0
    provider_cost: Decimal | None = None
    cache_write_1h_tokens: int = 0
