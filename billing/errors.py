"""Exceptions of the billing domain: one root, split by what the caller does next."""

from __future__ import annotations


class BillingError(Exception):
    """A usagebill error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class TransientError(BillingError):
    """A transient failure: retry later (database or Redis unreachable, serialization failure)."""


class PermanentError(BillingError):
    """A permanent failure: retrying will not help; park it with its reason."""


class ConfigError(PermanentError):
    """The configuration is invalid."""


class DatabaseUnavailable(TransientError):
    """The database is unreachable."""


class RedisUnavailable(TransientError):
    """Redis is unreachable."""


class MigrationError(PermanentError):
    """A migration cannot be applied."""


class MigrationsPending(PermanentError):
    """The database schema is not migrated: run `usagebill migrate`."""


class InputError(PermanentError):
    """The input is invalid."""


class AlreadyCommitted(BillingError):
    """The job's batch was committed before (by its own earlier run, or by a transaction that carried it):
    `result` is what that run stored for it."""

    def __init__(self, job_id: str, result: dict[str, object] | None) -> None:
        super().__init__(f"job {job_id} has already committed its batch")
        self.job_id = job_id
        self.result = result or {}
