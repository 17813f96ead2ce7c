"""Running the workflow on the local Slurm cluster (scripts/slurm-sandbox) from tests.

The sandbox is a single node with 2 CPUs, 2 fake GPUs (gres) and job accounting (sacct). A
session fixture (`yield from sandbox_session()`) starts it once per test session and stops it at
the end (only if this session started it), cancelling whatever jobs the tests left behind.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from e2e_helpers import REPO, snakemake

SANDBOX = REPO / "scripts" / "slurm-sandbox"
# profiles/slurm is what users run; the sandbox overlay only speeds up polling, names the
# sandbox's account/partition and shrinks the jobs to its 2-CPU node.
PROFILE_ARGS = ("--profile", "profiles/slurm", "--profile", "profiles/slurm-sandbox")

SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")
RUN_ID = re.compile(r"SLURM run ID: (\S+)")


def sandbox(command: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SANDBOX), command], capture_output=True, text=True, timeout=600, env={**os.environ, **env})


def sandbox_session() -> Iterator[SlurmState]:
    """Body of the session fixture `slurm_sandbox`: a running sandbox (accounting on, 2 fake GPUs).

    Skips where it cannot run (not root, no Slurm and no apt-get to install it) or when
    SNAKETUNE_SLURM=0. Jobs the tests submitted are cancelled at the end; the sandbox is stopped
    only if this session started it (one that was already up stays up).
    """
    # An explicit opt-out for machines where starting Slurm daemons is unwanted; CI never sets it.
    if os.environ.get("SNAKETUNE_SLURM") == "0":
        pytest.skip("SNAKETUNE_SLURM=0")
    # A developer's laptop may lack root or apt; CI never does, so there a missing sandbox fails.
    unavailable = pytest.fail if os.environ.get("CI") else pytest.skip
    if os.geteuid() != 0:
        unavailable("the Slurm sandbox needs root")
    if not shutil.which("sinfo") and not shutil.which("apt-get"):
        unavailable("no Slurm and no apt-get to install it")
    was_up = sandbox("status").returncode == 0
    started = sandbox("start", ACCOUNTING="1", CGROUPS="0", FAKE_GPUS="2")
    if started.returncode != 0:
        pytest.fail(f"scripts/slurm-sandbox start failed:\n{started.stdout}\n{started.stderr}")
    state = SlurmState()
    try:
        yield state
    finally:
        if state.job_ids:
            subprocess.run(["scancel", *sorted(state.job_ids)], capture_output=True, timeout=60)
        if not was_up:
            sandbox("stop")


class SlurmState:
    """What the session submitted, so the fixture can cancel leftovers."""

    def __init__(self) -> None:
        self.job_ids: set[str] = set()


@dataclass
class SlurmJob:
    """One Slurm job of a snakemake run: what snakemake submitted, joined with sacct."""

    rule: str
    wildcards: str  # as the plugin writes them: the wildcard values joined by "_"
    job_id: str
    state: str = ""
    exit_code: str = ""
    submit: datetime | None = None
    start: datetime | None = None
    end: datetime | None = None
    alloc_tres: str = ""
    req_tres: str = ""
    log: Path | None = None

    @property
    def elapsed(self) -> float:
        return (self.end - self.start).total_seconds()


@dataclass
class SlurmRun:
    result: subprocess.CompletedProcess
    run_id: str
    jobs: list[SlurmJob]
    wall_seconds: float = 0.0

    @property
    def output(self) -> str:
        return self.result.stdout + self.result.stderr

    def job(self, rule: str, wildcards: str) -> SlurmJob:
        matches = [j for j in self.jobs if j.rule == rule and j.wildcards == wildcards]
        assert len(matches) == 1, f"{len(matches)} {rule} job(s) for {wildcards!r} in {[(j.rule, j.wildcards) for j in self.jobs]}"
        return matches[0]

    def evaluations_of(self, run_dir: str) -> list[SlurmJob]:
        return [j for j in self.jobs if j.rule == "evaluate" and j.wildcards == run_dir]


def run_on_sandbox(state: SlurmState, summary: Path, *args: str, timeout: float = 900, **env: str) -> SlurmRun:
    """`snakemake --profile profiles/slurm --profile profiles/slurm-sandbox` on an experiment."""
    started = time.monotonic()
    try:
        result = snakemake(summary, *PROFILE_ARGS, *args, check=False, timeout=timeout, **env)
    except subprocess.TimeoutExpired as error:
        # the killed driver leaves its jobs running: cancel what it had submitted
        output = "".join(part.decode() if isinstance(part, bytes) else part or "" for part in (error.stdout, error.stderr))
        state.job_ids.update(job_id for _, job_id, _ in SUBMITTED.findall(output))
        if state.job_ids:
            subprocess.run(["scancel", *sorted(state.job_ids)], capture_output=True, timeout=60)
        if run_id := RUN_ID.search(output):  # every job of a snakemake run is named after its run ID
            subprocess.run(["scancel", "--name", run_id.group(1)], capture_output=True, timeout=60)
        raise
    output = result.stdout + result.stderr
    jobs = []
    for _, job_id, log in SUBMITTED.findall(output):
        # the plugin's log path: <logdir>/rule_<rule>/<wildcards>/<jobid>.log
        log_path = Path(log)
        jobs.append(
            SlurmJob(rule=log_path.parent.parent.name.removeprefix("rule_"), wildcards=log_path.parent.name, job_id=job_id, log=log_path)
        )
    state.job_ids.update(j.job_id for j in jobs)
    run_id = RUN_ID.search(output)
    fill_from_sacct(jobs)
    return SlurmRun(result, run_id.group(1) if run_id else "", jobs, time.monotonic() - started)


def _time(value: str) -> datetime | None:
    return None if value in ("", "Unknown", "None") else datetime.fromisoformat(value)


def sacct(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """sacct's allocation lines (-X) of the given jobs, by job id."""
    if not job_ids:
        return {}
    fields = ["JobID", "State", "ExitCode", "Submit", "Start", "End", "AllocTRES", "ReqTRES"]
    out = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-j", ",".join(job_ids), "-o", ",".join(fields)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    rows = {}
    for line in out.splitlines():
        values = dict(zip(fields, line.split("|"), strict=True))
        rows[values["JobID"]] = values
    return rows


def fill_from_sacct(jobs: list[SlurmJob]) -> None:
    rows = sacct([j.job_id for j in jobs])
    for job in jobs:
        row = rows.get(job.job_id)
        if row is None:
            continue
        # "CANCELLED by 0" -> "CANCELLED"
        job.state = row["State"].split()[0]
        job.exit_code = row["ExitCode"]
        job.submit, job.start, job.end = _time(row["Submit"]), _time(row["Start"]), _time(row["End"])
        job.alloc_tres, job.req_tres = row["AllocTRES"], row["ReqTRES"]


_STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ [\d:]{8} \d{4})\]\s*\n(\w+)", re.MULTILINE)


def command_window(log: Path | None) -> tuple[datetime, datetime] | None:
    """When the rule's command ran inside a Slurm job, from the job's log (1 s resolution).

    The job runs snakemake, which runs snakemake again under `srun`; the inner one prints
    "[<time>] localrule <rule>:" right before the command and "[<time>] Finished jobid" after it.
    """
    if not log or not log.is_file():
        return None
    stamps = [(datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y"), m.group(2)) for m in _STAMP.finditer(log.read_text())]
    starts = [t for t, word in stamps if word == "localrule"] or [t for t, word in stamps if word == "rule"]
    ends = [t for t, word in stamps if word == "Finished" and starts and t >= starts[-1]]
    return (starts[-1], ends[0]) if starts and ends else None


def add_columns(summary: Path, columns: dict[str, dict[str, str]]) -> None:
    """Append columns to the summary's All Runs table: {header: {run name: value}}, "-" elsewhere."""
    lines = summary.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| Run Name"))
    lines[header] += "".join(f" {name} |" for name in columns)
    lines[header + 1] += "---|" * len(columns)
    i = header + 2
    while i < len(lines) and lines[i].startswith("|"):
        name = lines[i].strip("|").split("|")[0].strip()
        lines[i] += "".join(f" {values.get(name, '-')} |" for values in columns.values())
        i += 1
    summary.write_text("\n".join(lines) + "\n")
