"""Errors a user can act on: entry points print their message as one line, without a traceback."""

from __future__ import annotations


class PixArtLabError(Exception):
    """Base of the errors whose message says all a user needs (the file, the key, expected and found)."""


class ConfigError(PixArtLabError):
    """A configuration value that cannot work: the message names the key."""


class ResumeError(PixArtLabError):
    """A checkpoint that cannot be continued by this run (written by another configuration or inputs)."""


class NonFiniteError(PixArtLabError):
    """NaN or inf in a training step's loss or gradients, under ``nan_policy=stop``."""
