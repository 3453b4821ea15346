"""What allkit raises for bad input: each message names the file or value and what was expected."""


class AllkitError(Exception):
    """Base class: the CLI prints these as one line and exits with code 2."""


class DataError(AllkitError, ValueError):
    """The data on disk (or passed in) is missing, malformed or not usable as asked."""


class ModelError(AllkitError, ValueError):
    """A model, checkpoint or saved folder is missing, damaged or does not match."""


class SubjectLeakageError(DataError):
    """A subject has cells in two parts of a split (e.g. train and test)."""

    def __init__(self, subjects, parts=("train", "test")):
        self.subjects, self.parts = sorted(subjects), tuple(parts)
        super().__init__(
            f"subject leakage: {len(self.subjects)} subject(s) have cells in both {self.parts[0]!r} and "
            f"{self.parts[1]!r}: {', '.join(self.subjects)}. Split by subject (a by-image split leaks "
            "people and must be asked for with leaky=True)"
        )


class ConfigError(AllkitError, ValueError):
    """An argument has a value outside what it accepts (e.g. ``epochs=0``, ``device="toaster"``)."""
