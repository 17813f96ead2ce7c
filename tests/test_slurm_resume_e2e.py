"""Interruptions on SLURM lose minutes, not epochs: a preempted training saves a step state and is
requeued by SLURM; one nearing its time limit saves and requeues itself; one that hits the limit
saves and resumes mid-epoch when rerun.

All on the session's Slurm sandbox (scripts/slurm-sandbox), whose `high` partition preempts
(REQUEUE, GraceTime 30 s) jobs of the default `debug` partition, through `--profile
profiles/slurm`. The first attempt holds after a named step (snaketune.faults) until what the
test does to it (a preemption, a shrunk time limit) tells it to stop: what happens does not
depend on how fast the machine trains.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from crash import small_dataset
from e2e_helpers import REPO, SNAKEMAKE, digest, row, wait_for, write_summary
from slurm_helpers import PROFILE_ARGS, run_on_sandbox, sacct

from snaketune.finetune import ATTEMPT_HEADER, ATTEMPTS, ATTEMPTS_LOG, TIME_LIMIT, epoch_complete
from snaketune.step_state import STEP_STATE

pytestmark = [pytest.mark.slurm, pytest.mark.e2e]

EPOCHS = 3
STEPS_PER_EPOCH = 5  # small_dataset: 40 words, batch 8
HELD_AT = 7  # mid-epoch 1


def experiment(tmp_path: Path, demo_assets: Path, name: str, policy: str) -> tuple[Path, Path, list[str]]:
    """A one-run experiment of 3 short epochs; its summary, checkpoints and configfile arguments
    (the sandbox's job sizes, then ``policy``: training keys)."""
    summary = write_summary(tmp_path / "exp", demo_assets, [row(name, 8, "1e-3")], epochs=EPOCHS)
    dataset = small_dataset(demo_assets, tmp_path / "data")
    summary.write_text(summary.read_text().replace(str(demo_assets / "data" / "wordcase.json"), str(dataset)))
    configfile = tmp_path / "policy.yaml"
    configfile.write_text(policy)
    # --configfile replaces the sandbox profile's own configfile: name both
    args = ["--configfile", "profiles/slurm-sandbox/resources.yaml", str(configfile), "--config", f"experiment={summary}"]
    return summary, summary.parent / "ck-outputs" / f"ck-out-{name}", args


def start(args: list[str], target: str, log: Path, **env: str) -> subprocess.Popen:
    with open(log, "w") as output:
        return subprocess.Popen(
            [str(SNAKEMAKE), target, *PROFILE_ARGS, *args],
            cwd=REPO,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, HF_HUB_OFFLINE="1", **env),
        )


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


def read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def logged_steps(checkpoints: Path) -> list[int]:
    """Every step every attempt logged (torchtune's DiskLogger, one file per attempt)."""
    return [int(step) for path in checkpoints.glob("logs/log_*.txt") for step in re.findall(r"^Step (\d+) \|", path.read_text(), re.M)]


def elapsed_minutes(job_id: str) -> float:
    """How long a running job has run (squeue %M: [[D-]H:]M:SS)."""
    text = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%M"], capture_output=True, text=True, check=True).stdout.strip()
    days, _, clock = text.rpartition("-")
    seconds = 0
    for part in clock.split(":"):
        seconds = seconds * 60 + int(part)
    return (int(days or 0) * 86400 + seconds) / 60


def squeue_state(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout.strip()


def release_when_requeued(job_id: str, driver: subprocess.Popen, **update: str) -> None:
    """Once SLURM has the job pending again: let it start at once (SLURM holds a requeued job
    back for a while, from when it is pending), with ``update`` (e.g. its time limit back)."""
    wait_for(lambda: squeue_state(job_id) == "PENDING", driver, timeout=300)
    fields = [f"{key}={value}" for key, value in {**update, "StartTime": "now"}.items()]
    subprocess.run(["scontrol", "update", f"JobId={job_id}", *fields], capture_output=True, check=True)


@contextlib.contextmanager
def held_training(slurm_sandbox, tmp_path: Path, args: list[str], name: str, **env: str):
    """The run ``name``'s training on the sandbox, held after step HELD_AT until something tells
    it to stop; yields the snakemake driver and the SLURM job id once it holds (the driver is
    killed on the way out if it still runs)."""
    experiment_dir = Path(args[-1].removeprefix("experiment=")).parent
    hold = f"recipe:step-{HELD_AT}@{tmp_path / 'never'}"
    driver = start(args, f"{name}/finetune_manifest.json", tmp_path / "driver.log", SNAKETUNE_FAULT=hold, **env)
    try:
        wait_for(lambda: f"holding at recipe:step-{HELD_AT}" in read(experiment_dir / name / "logs" / ATTEMPTS_LOG), driver, timeout=600)
        (job_id,) = slurm_ids(experiment_dir, name)
        slurm_sandbox.job_ids.add(job_id)
        yield driver, job_id
    finally:
        if driver.poll() is None:
            driver.kill()


def test_preempted_mid_epoch_saves_a_step_state_and_resumes_there(slurm_sandbox, tmp_path, demo_assets):
    summary, checkpoints, args = experiment(tmp_path, demo_assets, "preempted", "training:\n  save_every_steps: 2\n")
    experiment_dir, log = summary.parent, summary.parent / "preempted" / "logs" / ATTEMPTS_LOG
    # the first attempt holds after step 7, until the preemption's SIGTERM ends the hold
    with held_training(slurm_sandbox, tmp_path, args, "preempted") as (driver, job_id):
        training = run_status(experiment_dir)  # read while the job trains
        assert training["state"] == "running" and training["job_id"] == job_id, training
        # a job of the high-priority partition that needs the whole node preempts the training
        preemptor = subprocess.run(
            "sbatch --parsable -p high -A ml -c 2 --mem 500 -t 2 -o /dev/null --wrap".split() + ["sleep 3"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        slurm_sandbox.job_ids.add(preemptor)
        wait_for(lambda: f"saved a step state at step {HELD_AT} (epoch 2, stopping on SIGTERM)" in read(log), driver, timeout=300)
        # (sacct knows a job only once slurmdbd has recorded it)
        wait_for(lambda: sacct([preemptor]).get(preemptor, {}).get("State") == "COMPLETED", driver, timeout=300)
        release_when_requeued(job_id, driver)
        assert driver.wait(timeout=900) == 0, (tmp_path / "driver.log").read_text()[-4000:]

    assert attempts(log) == [job_id, job_id]  # the same SLURM job, started twice
    assert f"resuming from the step state at step {HELD_AT}" in read(experiment_dir / "preempted" / "logs" / "finetune.log")
    steps = logged_steps(checkpoints)
    assert sorted(set(steps)) == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    assert len(steps) - EPOCHS * STEPS_PER_EPOCH <= 2  # beyond the run's total: at most the save interval
    assert all(epoch_complete(checkpoints / f"epoch_{n}") for n in range(EPOCHS)) and not (checkpoints / STEP_STATE).exists()
    after = run_status(experiment_dir)
    assert after["state"] == "completed" and not after["flags"], after
    assert after["resumed"] == f"resumed at step {HELD_AT} of epoch 2 (attempt 2)" and after["requeues"] == 1, after
    assert [(i["by"], i["steps_lost"]) for i in after["interruptions"]] == [("SIGTERM", 0)], after


def test_near_its_time_limit_a_training_saves_and_requeues_itself(slurm_sandbox, tmp_path, demo_assets):
    margin = 5  # minutes
    summary, checkpoints, args = experiment(tmp_path, demo_assets, "longhaul", f"training:\n  requeue_margin_minutes: {margin}\n")
    experiment_dir, log = summary.parent, summary.parent / "longhaul" / "logs" / ATTEMPTS_LOG
    # the job re-reads its end time every 2 s (instead of 5 minutes) and so sees the update below
    with held_training(slurm_sandbox, tmp_path, args, "longhaul", SNAKETUNE_END_TIME_REFRESH_SECONDS="2") as (driver, job_id):
        assert re.search(rf"SLURM job {job_id} ends at ", read(log))
        # a limit that ends the job in >= 3 minutes: within the margin already, not reached soon
        limit = math.ceil(elapsed_minutes(job_id)) + 3
        subprocess.run(["scontrol", "update", f"JobId={job_id}", f"TimeLimit={limit}"], capture_output=True, check=True)
        wait_for(lambda: f"requeued SLURM job {job_id} (requeue 1 of at most 20)" in read(log), driver, timeout=300)
        release_when_requeued(job_id, driver, TimeLimit="30")
        assert driver.wait(timeout=900) == 0, (tmp_path / "driver.log").read_text()[-4000:]  # one invocation

    text = read(log)
    assert "stopping the training to save a step state and requeue the job" in text
    assert f"saved a step state at step {HELD_AT} (epoch 2, stopping on SIGTERM)" in text
    assert attempts(log) == [job_id, job_id]
    record = json.loads((checkpoints / ATTEMPTS).read_text())["attempts"]
    assert [(a["stopped_by"], a.get("requeued", False), a["resumed_step"]) for a in record] == [
        (TIME_LIMIT, True, None),
        (None, False, HELD_AT),
    ]
    assert sorted(set(logged_steps(checkpoints))) == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    after = run_status(experiment_dir)
    assert after["state"] == "completed" and not after["flags"], after
    assert (after["requeues"], after["own_requeues"]) == (1, 1), after
    out = subprocess.run(
        [sys.executable, "-m", "snaketune", "status", str(experiment_dir)], capture_output=True, text=True, check=True
    ).stdout
    assert "requeued x1 (1 before the time limit)" in out and f"resumed at step {HELD_AT} of epoch 2 (attempt 2)" in out


def test_timed_out_training_saves_a_step_state_and_resumes_there_when_rerun(slurm_sandbox, tmp_path, demo_assets):
    # no requeue before the limit: SLURM's own time limit ends the job (SIGTERM, KillWait, SIGKILL)
    summary, checkpoints, args = experiment(tmp_path, demo_assets, "slowpoke", "training:\n  requeue_margin_minutes: 0\n")
    experiment_dir, log = summary.parent, summary.parent / "slowpoke" / "logs" / ATTEMPTS_LOG
    with held_training(slurm_sandbox, tmp_path, args, "slowpoke") as (driver, job_id):
        # a 1-minute limit (SLURM's granularity), reached at once or within the minute, however
        # long the job took to get here
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=1"], capture_output=True, check=True)
        assert driver.wait(timeout=600) != 0
    assert sacct([job_id])[job_id]["State"] == "TIMEOUT"
    assert f"saved a step state at step {HELD_AT} (epoch 2, stopping on SIGTERM)" in read(log)

    status = run_status(experiment_dir)
    assert status["state"] == "timeout" and status["cause"] == "timeout", status
    assert status["resumable"] == f"yes: from the step state at step {HELD_AT} (epoch 2 of {EPOCHS})", status
    assert status["action"].startswith("raise resources.<stage>.time") and "--profile profiles/slurm" in status["action"]
    before = digest(checkpoints / "epoch_0")

    second = run_on_sandbox(slurm_sandbox, summary, "slowpoke/finetune_manifest.json", *args[:-2])
    assert second.result.returncode == 0, second.output[-4000:]
    assert f"resuming from the step state at step {HELD_AT}" in read(experiment_dir / "slowpoke" / "logs" / "finetune.log")
    assert digest(checkpoints / "epoch_0") == before
    assert sorted(set(logged_steps(checkpoints))) == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    assert run_status(experiment_dir)["state"] == "completed"
