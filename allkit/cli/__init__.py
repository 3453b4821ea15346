"""The ``allkit`` command line: one parser, each group of sub-commands in its own module."""
