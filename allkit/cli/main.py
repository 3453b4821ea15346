"""Entry point: ``allkit <command> ...``. Errors are one line on stderr and a non-zero exit code."""

from __future__ import annotations

import argparse
import sys

from allkit import __version__
from allkit.errors import AllkitError


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    from allkit.cli import data_cmd

    parser = argparse.ArgumentParser(
        prog="allkit",
        description="Reproduce the EfficientNet-B0 + XGBoost leukemia classifier on C-NMC 2019.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"allkit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    data_cmd.register(commands, _Formatter)
    try:
        from allkit.cli import model_cmd
    except ImportError:  # the model commands arrive with allkit.train / allkit.hybrid
        model_cmd = None
    if model_cmd is not None:
        model_cmd.register(commands, _Formatter)
    from allkit.cli import export_cmd

    export_cmd.register(commands, _Formatter)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except AllkitError as exc:
        print(f"allkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("allkit: interrupted", file=sys.stderr)
        return 130
