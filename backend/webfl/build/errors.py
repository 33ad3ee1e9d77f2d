"""Errors that stop the build with a message meant for the person running set-up."""

from __future__ import annotations


class BuildError(Exception):
    """A build step cannot go on; the message says what to do."""


class IntegrityError(BuildError):
    """A fetched file's sha256 differs from the one Pyodide's lock file expects."""
