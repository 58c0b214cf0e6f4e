"""Cold start (issue 16): `import app` against `import boto3`, each in a fresh interpreter.

What a new Lambda container pays before its first request is mostly imports; boto3 is the floor every function
pays anyway. Measured side by side, pair by pair (the machine's noise hits both alike), median of the ratios.
"""
from __future__ import annotations

import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TextIO

from local.aws import ROOT

PAIRS = 7
TARGET = 1.3  # issue 16: import app ≤ 1.3 × import boto3


@dataclass(frozen=True)
class ColdStart:
    app_seconds: list[float]
    boto3_seconds: list[float]

    @property
    def ratio(self) -> float:
        return statistics.median(a / b for a, b in zip(self.app_seconds, self.boto3_seconds, strict=True))


def _import_seconds(module: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, check=True)
    return time.perf_counter() - started


def measure(pairs: int = PAIRS) -> ColdStart:
    apps: list[float] = []
    botos: list[float] = []
    for _ in range(pairs):
        apps.append(_import_seconds("app"))
        botos.append(_import_seconds("boto3"))
    return ColdStart(apps, botos)


def print_section(out: TextIO, cold: ColdStart) -> bool:
    """True when the target passes."""
    passed = cold.ratio <= TARGET
    print(f"\nCold start: import app {statistics.median(cold.app_seconds):.2f} s, import boto3 "
          f"{statistics.median(cold.boto3_seconds):.2f} s (medians of {len(cold.app_seconds)} fresh interpreters, "
          f"side by side); ratio {cold.ratio:.2f}× (median of the pairs), target ≤ {TARGET}×: "
          f"{'PASS' if passed else 'FAIL'}", file=out)
    return passed


if __name__ == "__main__":
    print_section(sys.stdout, measure())
