"""Exceptions of the producer: one root; publishing itself never raises into app code."""


class ProducerError(Exception):
    """A usagebill producer error."""


class InvalidEventError(ProducerError, ValueError):
    """An event does not satisfy the wire format v1."""
