"""Resume on SLURM: a preempted training is requeued and resumes; a timed-out one resumes on rerun.

Both on the session's Slurm sandbox (scripts/slurm-sandbox), whose `high` partition preempts
(REQUEUE) jobs of the default `debug` partition, through `--profile profiles/slurm`. The first
attempt holds after a named epoch (snaketune.faults) until SLURM ends it, so what happens does
not depend on how fast the machine trains.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_helpers import REPO, SNAKEMAKE, digest, row, wait_for, write_summary
from slurm_helpers import PROFILE_ARGS, run_on_sandbox, sacct

from snaketune.finetune import ATTEMPT_HEADER, ATTEMPTS_LOG, epoch_complete

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]

EPOCHS = 4


def run_status(experiment: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "snaketune", "status", str(experiment), "--format", "json"], capture_output=True, check=True
    )
    (run,) = json.loads(out.stdout)["runs"]
    return run


def slurm_ids(experiment: Path, run_dir: str) -> list[str]:
    folder = experiment / ".snakemake" / "slurm_logs" / "rule_finetune" / run_dir
    return sorted((p.stem for p in folder.glob("*.log")), key=int)


def attempts(log: Path) -> list[str]:
    """The SLURM job id of every attempt the finetune log records."""
    return re.findall(re.escape(ATTEMPT_HEADER) + r" .*\(SLURM job (\d+)\)", log.read_text())


def test_preempted_training_is_requeued_and_resumes(slurm_sandbox, tmp_path, demo_assets):
    summary = write_summary(tmp_path / "exp", demo_assets, [row("preempted", 8, "1e-3")], epochs=EPOCHS)
    experiment, checkpoints = summary.parent, summary.parent / "ck-outputs" / "ck-out-preempted"
    # the first attempt holds after epoch_0 (never released); the requeued one resumes past it
    hold = f"recipe:after-epoch-0@{tmp_path / 'never'}"
    with open(tmp_path / "driver.log", "w") as output:
        driver = subprocess.Popen(
            [str(SNAKEMAKE), "preempted/finetune_manifest.json", *PROFILE_ARGS, "--config", f"experiment={summary}"],
            cwd=REPO,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, HF_HUB_OFFLINE="1", SNAKETUNE_FAULT=hold),
        )
    try:
        wait_for(lambda: epoch_complete(checkpoints / "epoch_0"), driver, timeout=300)
        (job_id,) = slurm_ids(experiment, "preempted")
        slurm_sandbox.job_ids.add(job_id)
        training = run_status(experiment)  # read while the job trains
        assert training["state"] == "running" and training["job_id"] == job_id, training
        assert 0 < training["progress"] < 1, training
        # a job of the high-priority partition that needs the whole node preempts the training
        preemptor = subprocess.run(
            [
                "sbatch",
                "--parsable",
                "-p",
                "high",
                "-A",
                "ml",
                "-c",
                "2",
                "--mem",
                "500",
                "-t",
                "2",
                "-o",
                "/dev/null",
                "--wrap",
                "sleep 3",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        slurm_sandbox.job_ids.add(preemptor)
        wait_for(lambda: sacct([job_id])[job_id]["State"] in ("PENDING", "REQUEUED"), driver, timeout=120)
        before = digest(checkpoints / "epoch_0")
        assert not (checkpoints / "epoch_1").exists()
        during = run_status(experiment)
        assert during["state"] in ("queued", "preempted") and during["job_id"] == job_id, during
        # Slurm holds a requeued job back for a while; let it start as soon as the node is free
        wait_for(lambda: sacct([preemptor])[preemptor]["State"] == "COMPLETED", driver, timeout=120)
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True, check=True)
        assert driver.wait(timeout=600) == 0, (tmp_path / "driver.log").read_text()[-4000:]
    finally:
        if driver.poll() is None:
            driver.kill()

    log = experiment / "preempted" / "logs" / ATTEMPTS_LOG
    assert attempts(log) == [job_id, job_id]  # the same SLURM job, started twice
    assert "resuming from epoch_" in (experiment / "preempted" / "logs" / "finetune.log").read_text()
    assert digest(checkpoints / "epoch_0") == before  # not rewritten
    assert all(epoch_complete(checkpoints / f"epoch_{n}") for n in range(EPOCHS))
    after = run_status(experiment)
    assert after["state"] == "completed" and not after["flags"], after


def test_timed_out_training_resumes_when_rerun(slurm_sandbox, tmp_path, demo_assets):
    summary = write_summary(tmp_path / "exp", demo_assets, [row("slowpoke", 8, "1e-3")], epochs=EPOCHS)
    experiment, checkpoints = summary.parent, summary.parent / "ck-outputs" / "ck-out-slowpoke"
    # held after epoch_1 until SLURM's 1-minute limit ends the job
    hold = f"recipe:after-epoch-1@{tmp_path / 'never'}"
    first = run_on_sandbox(
        slurm_sandbox, summary, "slowpoke/finetune_manifest.json", "--set-resources", "finetune:runtime=1", SNAKETUNE_FAULT=hold
    )
    assert first.result.returncode != 0
    assert first.job("finetune", "slowpoke").state == "TIMEOUT"

    status = run_status(experiment)
    assert status["state"] == "timeout" and status["cause"] == "timeout", status
    assert status["resumable"].startswith("yes: from epoch_"), status
    assert status["action"].startswith("raise resources.<stage>.time") and "--profile profiles/slurm" in status["action"]
    saved = int(status["resumable"].split("epoch_")[1].split()[0])
    assert saved == 1, status
    before = digest(checkpoints / "epoch_0")

    second = run_on_sandbox(slurm_sandbox, summary, "slowpoke/finetune_manifest.json", "--set-resources", "finetune:runtime=30")
    assert second.result.returncode == 0, second.output[-4000:]
    log = (experiment / "slowpoke" / "logs" / "finetune.log").read_text()
    assert f"resuming from epoch_{saved}" in log
    assert digest(checkpoints / "epoch_0") == before
    assert run_status(experiment)["state"] == "completed"
