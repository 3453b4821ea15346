"""Exceptions allkit raises for bad input: each message names the file or value and what was expected."""

from __future__ import annotations


class AllkitError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class DataError(AllkitError, ValueError):
    """The data on disk is missing, malformed or not usable as asked."""


class SubjectLeakageError(DataError):
    """A subject appears in both a training part and an evaluation part of a split."""

    def __init__(self, subjects, parts=("train", "eval")):
        self.subjects = sorted(subjects)
        self.parts = tuple(parts)
        super().__init__(
            f"subject leakage: {len(self.subjects)} subject(s) appear in both {self.parts[0]!r} and "
            f"{self.parts[1]!r}: {', '.join(self.subjects)}. Split by subject, or pass leaky=True "
            "only to reproduce the authors' by-image split."
        )


class ModelError(AllkitError, ValueError):
    """A model, checkpoint or saved directory is missing, corrupted or does not match."""
