"""Shared helpers of the benchmarks: timing a command, medians, the figures table."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")


@dataclass
class Timing:
    wall: float
    cpu: float  # user + system seconds of the command and its children


def timed(command: list[str], cwd: Path | str = REPO, env: dict | None = None, check: bool = True) -> Timing:
    """Run ``command`` to completion; its wall time and the CPU time it (and its children) used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if check and result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(command)}\n{result.stdout[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timing(wall, cpu)


def median(values) -> float:
    return statistics.median(values)


def machine() -> str:
    """One line naming this machine (for BENCHMARKS.md)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = "load " + " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        load = ""
    import snakemake

    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, snakemake {snakemake.__version__}, {load}"


def figure(name: str, value: str, anchor: str, ratio: str, goal: str, verdict: str) -> None:
    print(f"| {name} | {value} | {anchor} | {ratio} | {goal} | {verdict} |", flush=True)


def header() -> None:
    print("| figure | value | anchor | ratio | goal | |", flush=True)
    print("|---|---|---|---|---|---|", flush=True)


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"
