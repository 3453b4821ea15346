"""How long `allkit --help` and `allkit --version` take, and how much memory: each run in a fresh process.

    python benchmarks/startup.py          # prints seconds (median of 5) and peak resident memory per command

Target (printed, not asserted): under 1 s and 200 MB each, since registering the commands imports nothing heavy
(torch, xgboost and pandas are imported by the command that runs)."""

import resource
import statistics
import subprocess
import sys
import time

COMMANDS = (["--version"], ["--help"], ["reproduce", "--help"])


def measure(args: list[str]) -> tuple[float, float]:
    seconds = []
    for _ in range(5):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "allkit", *args], check=True, capture_output=True)
        seconds.append(time.perf_counter() - started)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far, in KiB on Linux
    return statistics.median(seconds), peak_kib / 1024


def main() -> None:
    for args in COMMANDS:
        seconds, mib = measure(args)
        verdict = "ok" if seconds < 1 and mib < 200 else "over the 1 s / 200 MB target"
        print(f"allkit {' '.join(args):<18} {seconds:6.2f} s  {mib:6.0f} MiB peak  ({verdict})")


if __name__ == "__main__":
    main()
