"""``allkit <command> ...``. Errors are one line on stderr and exit code 2; ``--debug`` (or
``ALLKIT_DEBUG=1``) shows the traceback instead."""

import argparse
import os
import signal
import sys
import threading
import warnings

from allkit import __version__
from allkit.cli import data_cmd, export_cmd, model_cmd
from allkit.errors import AllkitError


class Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="allkit",
        formatter_class=Formatter,
        description="Reproduce the EfficientNet-B0 + XGBoost leukemia classifier on C-NMC 2019.",
    )
    parser.add_argument("--version", action="version", version=f"allkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (data_cmd, model_cmd, export_cmd):
        module.register(commands, Formatter)
    return parser


class Terminated(BaseException):  # like KeyboardInterrupt: no `except Exception` swallows it
    """SIGTERM (a killed job, a Colab restart): raised in the main thread so that every ``finally`` cleans up as
    for Ctrl-C: staging folders, half-built caches and locks are removed, earlier results are kept."""


def _terminate(signum, frame):
    raise Terminated


def _one_line(message, category, filename, lineno, line=None) -> str:
    return f"allkit: warning: {message}\n"  # no source path and line: the user did not write that file


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _one_line
    handles_signals = threading.current_thread() is threading.main_thread()  # signal() works only there
    previous = signal.signal(signal.SIGTERM, _terminate) if handles_signals else None
    try:
        return int(args.handler(args) or 0)
    except Terminated:
        print(
            "allkit: terminated (SIGTERM); nothing half-written was kept, earlier results are as they were",
            file=sys.stderr,
        )
        return 143
    except (AllkitError, OSError) as err:
        if args.debug or os.environ.get("ALLKIT_DEBUG") == "1":
            raise
        where = (
            f" ({err.filename})"
            if isinstance(err, OSError) and err.filename and str(err.filename) not in str(err)
            else ""
        )
        print(f"allkit: error: {err}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("allkit: interrupted", file=sys.stderr)
        return 130
    finally:
        if handles_signals:
            signal.signal(signal.SIGTERM, previous)
