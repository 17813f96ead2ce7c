"""Resume, never restart: a killed training continues from its last complete epoch, a stopped
one (Ctrl-C, SIGTERM) from the step state it saved on the way out.

Kills and holds happen at named points (snaketune.faults), never after a wait: what the tests
see does not depend on how fast the machine trains."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from e2e_helpers import REPO, SNAKEMAKE, digest, row, snakemake, wait_for, write_summary

from snaketune.finetune import ATTEMPTS, epoch_complete
from snaketune.step_state import STEP_STATE

pytestmark = pytest.mark.e2e


def start(summary: Path, *args: str, fault: str) -> subprocess.Popen:
    """The workflow in a session of its own, with ``SNAKETUNE_FAULT=fault``."""
    return subprocess.Popen(
        [str(SNAKEMAKE), *args, "--cores", "2", "--config", f"experiment={summary}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=dict(os.environ, HF_HUB_OFFLINE="1", SNAKETUNE_FAULT=fault),
    )


def read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def run_status(summary: Path) -> dict:
    """``snaketune status --format json`` of the experiment's only run."""
    out = subprocess.run([sys.executable, "-m", "snaketune", "status", str(summary), "--format", "json"], capture_output=True, check=True)
    return json.loads(out.stdout)["runs"][0]


def first_logged(metric_log: Path) -> tuple[int, float]:
    """Step and learning rate of the first line of a torchtune DiskLogger log."""
    step, values = metric_log.read_text().splitlines()[0].removeprefix("Step ").split(" | ")
    return int(step), float(next(v for v in values.split() if v.startswith("lr:")).removeprefix("lr:"))


@pytest.fixture
def three_epochs(tmp_path, demo_assets):
    summary = write_summary(tmp_path / "exp", demo_assets, [row("only", 8, "1e-3")], epochs=3, plan="Evaluate all epochs.")
    return summary, tmp_path / "exp" / "ck-outputs" / "ck-out-only"


def test_sigkill_during_the_second_epoch_resumes_from_the_first(three_epochs):
    summary, checkpoints = three_epochs
    # killed mid-way through the second epoch (50 steps an epoch): the driver, snakemake's job
    # and torchtune alike
    process = start(summary, "only/finetune_manifest.json", fault="recipe:step-60")
    assert process.wait(timeout=600) == -signal.SIGKILL
    assert epoch_complete(checkpoints / "epoch_0") and not (checkpoints / "epoch_1").exists()
    before = digest(checkpoints / "epoch_0")
    status = json.loads(
        subprocess.run(
            [sys.executable, "-m", "snaketune", "status", str(summary), "--format", "json"], capture_output=True, check=True
        ).stdout
    )
    (run,) = status["runs"]
    assert run["state"] == "failed" and run["cause"].startswith("interrupted"), run
    assert run["resumable"].startswith("yes: from epoch_"), run
    assert run["action"] == f"snakemake --config experiment={summary}"

    snakemake(summary, "--unlock")  # the killed driver's lock (the README's recovery step)
    snakemake(summary, "--cores", "2")

    assert digest(checkpoints / "epoch_0") == before  # byte-identical and not rewritten
    assert all(epoch_complete(checkpoints / f"epoch_{n}") for n in range(3))
    log = (summary.parent / "only" / "logs" / "finetune.log").read_text()
    assert "resuming from epoch_0" in log or "resuming from epoch_1" in log
    assert "resume_from_checkpoint=True" in log
    # the resumed process continues torchtune's step count, and with it the LR schedule
    starts = sorted((first_logged(path) for path in (checkpoints / "logs").glob("log_*.txt")), key=lambda point: point[0])
    assert [step for step, _ in starts] in ([1, 51], [1, 101]), starts
    assert starts[1][1] < starts[0][1]  # the cosine schedule's LR there, not its initial LR again
    results = pd.read_csv(summary.parent / "results" / "results.csv")
    assert sorted(results["epoch"]) == [0, 1, 2]  # all three epochs evaluated


def test_ctrl_c_of_a_local_training_saves_a_step_state_and_the_rerun_resumes_there(tmp_path, demo_assets):
    from crash import small_dataset

    summary = write_summary(tmp_path / "exp", demo_assets, [row("only", 8, "1e-3")], epochs=2)
    dataset = small_dataset(demo_assets, tmp_path / "data")  # 5 steps an epoch
    summary.write_text(summary.read_text().replace(str(demo_assets / "data" / "wordcase.json"), str(dataset)))
    checkpoints, log = tmp_path / "exp" / "ck-outputs" / "ck-out-only", tmp_path / "exp" / "only" / "logs" / "finetune-attempts.log"
    # held after step 7 (mid-epoch 1) until the stop releases it, as a long step would end
    process = start(summary, "only/finetune_manifest.json", fault=f"recipe:step-7@{tmp_path / 'never'}")
    wait_for(lambda: "holding at recipe:step-7" in read(log), process)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the driver's process group
    assert process.wait(timeout=600) != 0
    # the job forwarded it, kept passing the training's output through and waited for it to save
    assert "saved a step state at step 7 (epoch 2, stopping on SIGINT)" in read(log)
    (first,) = json.loads((checkpoints / ATTEMPTS).read_text())["attempts"]
    assert (first["stopped_by"], first["exit_code"], first["saved_step"], first["reached_step"]) == ("SIGINT", 130, 7, 7), first
    assert (checkpoints / STEP_STATE).is_file() and epoch_complete(checkpoints / "epoch_0")
    stopped = run_status(summary)
    assert stopped["state"] == "failed" and stopped["cause"] == "stopped", stopped
    assert stopped["resumable"] == "yes: from the step state at step 7 (epoch 2 of 2)", stopped

    snakemake(summary, "--unlock")
    snakemake(summary, "only/finetune_manifest.json", "--cores", "2")
    assert "resuming from the step state at step 7" in read(summary.parent / "only" / "logs" / "finetune.log")
    newest = max(checkpoints.glob("logs/log_*.txt"), key=lambda path: int(path.stem[4:]))
    assert first_logged(newest)[0] == 8  # the step after the saved one
    assert not (checkpoints / STEP_STATE).exists()
    done = run_status(summary)
    assert done["state"] == "completed" and done["resumed"] == "resumed at step 7 of epoch 2 (attempt 2)", done
    assert [(i["by"], i["steps_lost"]) for i in done["interruptions"]] == [("SIGINT", 0)], done


def test_killed_driver_rerun_does_not_train_twice(three_epochs):
    summary, checkpoints = three_epochs
    target = "only/finetune_manifest.json"
    release = summary.parent / "release"
    # the training holds the run's lock, before training, until the test releases it
    process = start(summary, target, fault=f"finetune:before-training@{release}")
    wait_for(lambda: "holding at finetune:before-training" in read(summary.parent / "only" / "logs" / "finetune.log"), process)
    os.kill(process.pid, signal.SIGKILL)  # only the driver: its training goes on
    process.wait()
    orphan = run_status(summary)
    assert orphan["state"] == "running" and orphan["job_id"].startswith("pid "), orphan  # the lock names the training
    snakemake(summary, "--unlock")
    rerun = subprocess.Popen(
        [str(SNAKEMAKE), target, "--cores", "2", "--config", f"experiment={summary}"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
    )
    attempts = summary.parent / "only" / "logs" / "finetune-attempts.log"
    wait_for(lambda: "waiting for it to end" in read(attempts), rerun)
    release.touch()  # the orphan trains all epochs now; the rerun's job waits for its lock
    assert rerun.wait(timeout=1200) == 0
    log = (summary.parent / "only" / "logs" / "finetune.log").read_text()
    assert "waiting for it to end" in log
    assert "not retraining" in log  # the orphaned training finished the run; no second one
    assert "with resolved config" not in log  # torchtune's first line when a recipe starts
    assert (summary.parent / target).is_file()


def test_training_finished_but_marker_missing_is_not_retrained(three_epochs, tmp_path):
    summary, checkpoints = three_epochs
    target = "only/finetune_manifest.json"
    snakemake(summary, target, "--cores", "2")
    (summary.parent / target).unlink()
    before = digest(checkpoints / "epoch_2")
    snakemake(summary, target, "--cores", "2")
    assert digest(checkpoints / "epoch_2") == before
    assert "not retraining" in (summary.parent / "only" / "logs" / "finetune.log").read_text()


def test_second_invocation_is_refused_by_the_lock(three_epochs):
    summary, checkpoints = three_epochs
    # held before training (never released): the first invocation holds Snakemake's lock
    process = start(summary, "only/finetune_manifest.json", fault=f"finetune:before-training@{summary.parent / 'never'}")
    try:
        wait_for(lambda: (checkpoints / "snaketune_fingerprint.json").is_file(), process)
        second = snakemake(summary, "--cores", "1", check=False)
        assert second.returncode != 0
        assert "cannot be locked" in second.stdout + second.stderr
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
