"""pplvi's exception types. Every error a user can trigger says what went wrong, where, and how to fix it."""

from __future__ import annotations


class PPLVIError(Exception):
    """Base class of all errors raised by pplvi."""


class AddressError(PPLVIError, KeyError):
    """A choice address is missing, unexpected, duplicated or malformed."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class EstimatorError(PPLVIError):
    """A gradient estimator cannot be applied soundly at a random choice."""


class ObjectiveError(PPLVIError):
    """An objective program is malformed (non-scalar value, bad parameters, keys passed by hand...)."""


class SupportError(PPLVIError, ValueError):
    """A value lies outside the support of the distribution at its address."""


class DataError(PPLVIError, FileNotFoundError):
    """A dataset file is missing or corrupt."""
