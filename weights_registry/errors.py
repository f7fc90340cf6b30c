"""Exceptions of the weights registry.

Every error the registry raises is a ``WeightsError``, so callers (the CLI) can
catch one class and print its message, which always says what to do next.
"""

from __future__ import annotations


class WeightsError(Exception):
    """Base class: an initialization could not be resolved, fetched or loaded."""


class CatalogueError(WeightsError):
    """catalogue.yaml is malformed (a bug in the package, not in the user's input)."""


class UnknownInitError(WeightsError):
    """The init name is neither a catalogue entry nor a checkpoint file."""


class UserCheckpointRequiredError(WeightsError):
    """The entry has no public weights and no --checkpoint file was given."""


class WeightsUnavailableError(WeightsError):
    """The weights are not cached and could not be downloaded (offline or network error)."""


class HashMismatchError(WeightsError):
    """A weights file does not have the SHA-256 the catalogue expects."""


class UntrustedCheckpointError(WeightsError):
    """torch.load(weights_only=True) refused a pickle; only --trust-checkpoint loads it."""


class CheckpointMismatchError(WeightsError):
    """The checkpoint's tensors do not cover the encoder (missing, unexpected or wrong shape)."""
