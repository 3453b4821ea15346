"""``allkit`` command line: one parser, sub-commands in their own modules."""

from allkit.cli.main import main

__all__ = ["main"]
