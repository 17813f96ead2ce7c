"""Train -> eval latency on the Slurm sandbox, and what the status polling costs the controller.

    .venv/bin/python benchmarks/bench_slurm.py        # needs root (scripts/slurm-sandbox)

One fine-tuned run of the tiny demo model (1 epoch) and its evaluation, submitted through
`--profile profiles/slurm --profile profiles/slurm-sandbox`. From sacct (1 s resolution): the
training job's end, the evaluation job's submission and start. The figure: evaluation start minus
training end, against the status-poll interval that was running when the training ended.

How snakemake-executor-plugin-slurm polls: one `sacct` call for all of the run's jobs per round;
the first `slurm-init-seconds-before-status-checks` after a submission, then each round without a
finished job waits 10 s longer (capped at 180 s), and a round that finds one resets it. A training
that ends during a wait is noticed when that wait ends: its evaluation is submitted at most one
interval later (plus a submission and Slurm's scheduling).

The sandbox is started if it is down (with the test suite's options, so a test session sharing
it is not disturbed) and stopped at the end only if this script started it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, SNAKEMAKE, figure, header, machine, verdict  # noqa: E402
from bench_jobs import SUMMARY, demo_assets, env  # noqa: E402

SANDBOX = REPO / "scripts" / "slurm-sandbox"
SANDBOX_OPTIONS = {"ACCOUNTING": "1", "CGROUPS": "0", "FAKE_GPUS": "2"}  # as tests/slurm_helpers.py
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+) \(log: (\S+)\)")
INCREMENT, CAP = 10, 180  # the plugin's back-off per empty round, and its cap (seconds)


def sandbox(command: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SANDBOX), command], capture_output=True, text=True, timeout=600, env={**os.environ, **SANDBOX_OPTIONS})


def sacct(job_ids: list[str]) -> dict[str, dict[str, datetime]]:
    fields = ["JobID", "State", "Submit", "Start", "End"]
    out = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-j", ",".join(job_ids), "-o", ",".join(fields)], capture_output=True, text=True, check=True
    ).stdout
    rows = {}
    for line in out.splitlines():
        row = dict(zip(fields, line.split("|"), strict=True))
        rows[row["JobID"]] = {key: datetime.fromisoformat(row[key]) for key in ("Submit", "Start", "End")} | {"State": row["State"]}
    return rows


def poll_settings() -> dict:
    settings = {}
    for profile in ("slurm", "slurm-sandbox"):
        settings.update(yaml.safe_load((REPO / "profiles" / profile / "config.yaml").read_text()))
    return {
        "init": int(settings.get("slurm-init-seconds-before-status-checks", 40)),
        "between": int(settings.get("seconds-between-status-checks", 10)),
    }


def interval_at(elapsed: float, init: int) -> tuple[float, float]:
    """The plugin's polling wait that notices a job ending `elapsed` s after the first submission
    (no job finished before): its start and its length. A check in the same second as the end
    (sacct's resolution) may have seen the job still running: the next wait notices it then."""
    start, length = 0.0, init
    while start + length <= elapsed:
        start, length = start + length, min(length + INCREMENT, CAP)
    return start, length


def queries_per_minute(init: int) -> tuple[float, float, float]:
    """sacct calls per minute: while jobs keep finishing (every wait is `init`), during the first
    10 minutes without a finished job, and in the steady state of long jobs (the cap)."""
    busy = 60 / init
    t, n, length = 0.0, 0, init
    while t + length <= 600:
        t, n, length = t + length, n + 1, min(length + INCREMENT, CAP)
    return busy, n / 10, 60 / CAP


def main() -> None:
    print(f"machine: {machine()}\n", flush=True)
    if os.geteuid() != 0 or not shutil.which("sbatch") and not shutil.which("apt-get"):
        print("skipped: the Slurm sandbox needs root (and Slurm or apt-get)")
        return
    settings = poll_settings()
    was_up = sandbox("status").returncode == 0
    if not was_up:
        started = sandbox("start")
        if started.returncode != 0:
            sys.exit(f"scripts/slurm-sandbox start failed:\n{started.stdout}\n{started.stderr}")
    try:
        assets = demo_assets()
        with tempfile.TemporaryDirectory(prefix="snaketune-bench-slurm-") as tmp:
            summary = Path(tmp) / "experiment_summary.md"
            summary.write_text(
                SUMMARY.format(model=assets / "models" / "tiny-llama-base", dataset=assets / "data" / "wordcase.json", epochs=1)
            )
            command = [
                SNAKEMAKE, "--profile", "profiles/slurm", "--profile", "profiles/slurm-sandbox",
                "--config", f"experiment={summary}",
            ]  # fmt: skip
            result = subprocess.run(command, cwd=REPO, env=env(), capture_output=True, text=True, timeout=900)
            output = result.stdout + result.stderr
            jobs = {Path(log).parent.parent.name.removeprefix("rule_"): job_id for _, job_id, log in SUBMITTED.findall(output)}
            if result.returncode != 0 or not {"finetune", "evaluate"} <= set(jobs):
                sys.exit(f"the Slurm run failed ({result.returncode}):\n{output[-4000:]}")
            rows = sacct(list(jobs.values()))
    finally:
        if not was_up:
            sandbox("stop")

    train, evaluation = rows[jobs["finetune"]], rows[jobs["evaluate"]]
    first = min(row["Submit"] for row in rows.values())
    ended = (train["End"] - first).total_seconds()
    wait_start, wait = interval_at(ended, settings["init"])
    submitted = (evaluation["Submit"] - train["End"]).total_seconds()
    latency = (evaluation["Start"] - train["End"]).total_seconds()
    print(
        f"training job {jobs['finetune']}: submitted +0 s, ran {(train['End'] - train['Start']).total_seconds():.0f} s, ended +{ended:.0f} s"
    )
    print(
        f"status polls (plugin schedule): waits of {settings['init']}, {settings['init'] + INCREMENT}, ... s; the one running then: +{wait_start:.0f} .. +{wait_start + wait:.0f} s"
    )
    print(f"evaluation job {jobs['evaluate']}: submitted {submitted:.0f} s and started {latency:.0f} s after the training ended\n")
    header()
    figure(
        "train end -> first evaluation start (Slurm sandbox)",
        f"{latency:.0f} s (submitted after {submitted:.0f} s)",
        f"the poll interval that noticed it: {wait:.0f} s",
        f"{latency / wait:.2f} intervals",
        "<= 1 interval",
        verdict(latency <= wait + 1),  # sacct times have 1 s resolution
    )
    for name, init in (("profiles/slurm-sandbox", settings["init"]), ("profiles/slurm (plugin default)", 40)):
        busy, first_ten, steady = queries_per_minute(init)
        figure(
            f"status queries/min, {name}: first wait {init} s",
            f"{busy:.1f} while jobs keep finishing; {first_ten:.1f} over 10 min without one; {steady:.2f} at the {CAP} s cap",
            "-",
            "-",
            "-",
            "",
        )


if __name__ == "__main__":
    main()
