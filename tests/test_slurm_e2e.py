"""The workflow on a real (local, single-node) Slurm cluster through `--profile profiles/slurm`.

One session-wide sandbox (scripts/slurm-sandbox: 2 CPUs, 2 fake GPUs, accounting). Two
snakemake invocations on one experiment directory:
1. two runs: everything completes, each run's evaluation is submitted only after its own
   training ended, and the fast run is evaluated while the slow one's job still runs (the slow
   job holds before writing its manifest until the fast run's evaluation log exists:
   snaketune.faults, so the order does not depend on the machine's speed);
2. the same summary with three rows added: one asks for a GPU (sbatch --gpus=1; torchtune then
   fails on this CPU-only machine), one names a dataset that does not exist (the finetune job
   fails early), and a control: the failures are reported with their Slurm state and the
   control is still evaluated (keep-going); the finished runs are not resubmitted.
Run with -s to see the measured overheads.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from e2e_helpers import REPO, row, snakemake, write_summary
from slurm_helpers import PROFILE_ARGS, SlurmRun, add_columns, command_window, run_on_sandbox

EPOCHS = 2
TASK_ROW = "| wordcase | snaketune | wordcase.json (test) | exact match |"
ROWS = [row("fast", 8, "3e-3"), row("slow", 8, "1e-3")]
ADDED = [row("gpu", 8, "1e-4"), row("nodata", 4, "3e-3"), row("base", "-", "-", "Control")]
COLUMNS = {"GPUs": {"gpu": "1"}, "Dataset": {"nodata": "no-such-dataset.json"}}


def run_dirs(experiment: Path) -> dict[str, str]:
    """Run Name -> run directory, from the rendered setup files."""
    names = {}
    for setup in experiment.glob("*/setup_finetune.yaml"):
        names[yaml.safe_load(setup.read_text())["run_name"]] = setup.parent.name
    return names


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, demo_assets) -> Path:
    """The summary with the first step's rows; the added rows come in `with_failures`."""
    directory = tmp_path_factory.mktemp("slurm-experiment")
    summary = write_summary(directory, demo_assets, ROWS + ADDED, epochs=EPOCHS, plan="Evaluate all epochs.", name="slurm")
    # 2 tasks x 2 epochs: 4 evaluations per run, in one allocation
    summary.write_text(summary.read_text().replace(TASK_ROW, TASK_ROW + "\n" + TASK_ROW.replace("| wordcase |", "| spelling |")))
    add_columns(summary, COLUMNS)
    full = summary.read_text()
    added = tuple(f"| {line.split('|')[1].strip()} |" for line in ADDED)
    summary.write_text("".join(line for line in full.splitlines(keepends=True) if not line.startswith(added)))
    (directory / ".full-summary.md").write_text(full)
    return summary


@pytest.fixture(scope="module")
def two_runs(slurm_sandbox, experiment) -> SlurmRun:
    from snaketune.workflow import load_plan, workflow_config

    directories = {run.name: run.run_dir for run in load_plan(experiment, workflow_config()).runs}
    fast_log = experiment.parent / directories["fast"] / "eval" / "logs" / "wordcase_epoch_0.eval"
    release = experiment.parent / ".release-slow"

    def release_when_the_fast_run_is_evaluated():
        deadline = time.monotonic() + 900
        while not fast_log.is_file() and time.monotonic() < deadline:
            time.sleep(0.5)
        release.touch()

    watcher = threading.Thread(target=release_when_the_fast_run_is_evaluated, daemon=True)
    watcher.start()
    run = run_on_sandbox(slurm_sandbox, experiment, SNAKETUNE_FAULT=f"finetune:before-manifest/{directories['slow']}@{release}")
    watcher.join()
    assert run.result.returncode == 0, run.output[-6000:]
    return run


@pytest.fixture(scope="module")
def with_failures(slurm_sandbox, experiment, two_runs) -> SlurmRun:
    experiment.write_text((experiment.parent / ".full-summary.md").read_text())
    return run_on_sandbox(slurm_sandbox, experiment)


@pytest.mark.slurm
@pytest.mark.e2e
def test_every_job_completes(two_runs, experiment):
    names = run_dirs(experiment.parent)
    assert sorted(j.rule for j in two_runs.jobs) == ["evaluate", "evaluate", "finetune", "finetune"]
    for job in two_runs.jobs:
        assert job.state == "COMPLETED", (job, two_runs.output[-4000:])
    table = pd.read_csv(experiment.parent / "results" / "results.csv")
    assert sorted(table["run_name"]) == ["fast"] * 4 + ["slow"] * 4
    assert set(table["epoch"]) == {0, 1} and set(table["task"]) == {"wordcase", "spelling"}
    assert set(table["run"]) == {names["fast"], names["slow"]}
    # one evaluation allocation per run for its 2 tasks x 2 epochs
    for name in ("fast", "slow"):
        (evaluation,) = two_runs.evaluations_of(names[name])
        assert "evaluating 4 of 4 planned pair(s)" in (experiment.parent / names[name] / "logs" / "evaluate.log").read_text()


@pytest.mark.slurm
@pytest.mark.e2e
def test_evaluation_is_submitted_after_its_own_training(two_runs, experiment):
    names = run_dirs(experiment.parent)
    for name in ("fast", "slow"):
        training = two_runs.job("finetune", names[name])
        (evaluation,) = two_runs.evaluations_of(names[name])
        assert evaluation.submit >= training.end, (name, training, evaluation)


@pytest.mark.slurm
@pytest.mark.e2e
def test_fast_run_is_evaluated_while_the_slow_run_trains(two_runs, experiment):
    names = run_dirs(experiment.parent)
    (fast_eval,) = two_runs.evaluations_of(names["fast"])
    slow_training = two_runs.job("finetune", names["slow"])
    print_figures("two runs", two_runs, names)
    assert fast_eval.start < slow_training.end, (fast_eval, slow_training)


@pytest.mark.slurm
@pytest.mark.e2e
def test_rerun_submits_nothing(two_runs, experiment):
    result = snakemake(experiment, *PROFILE_ARGS, "-n")
    assert "Nothing to be done" in result.stdout + result.stderr


@pytest.mark.slurm
@pytest.mark.e2e
def test_failures_are_reported_and_the_rest_finishes(with_failures, experiment):
    names = run_dirs(experiment.parent)
    run = with_failures
    assert run.result.returncode != 0
    # only the new rows' jobs were submitted: the finished runs are not redone
    assert sorted((j.rule, j.wildcards) for j in run.jobs) == sorted(
        [("finetune", names["gpu"]), ("finetune", names["nodata"]), ("evaluate", names["base"])]
    )
    for name in ("gpu", "nodata"):
        job = run.job("finetune", names[name])
        assert job.state == "FAILED", job
        assert f"SLURM-job '{job.job_id}' failed, SLURM status is: 'FAILED'" in run.output
    # keep-going: the control is evaluated although both trainings failed
    assert run.job("evaluate", names["base"]).state == "COMPLETED"
    assert (experiment.parent / names["base"] / "eval" / "logs" / "wordcase_base.eval").is_file()
    # the missing dataset stops the job before torchtune starts
    log = (experiment.parent / names["nodata"] / "logs" / "finetune.log").read_text()
    assert "missing on this machine" in log and "no-such-dataset.json" in log
    assert "tune run" not in log
    print_figures("with failures", run, names)


@pytest.mark.slurm
@pytest.mark.e2e
def test_gpu_request_reaches_slurm(with_failures, experiment):
    names = run_dirs(experiment.parent)
    gpu = with_failures.job("finetune", names["gpu"])
    assert "gres/gpu=1" in gpu.alloc_tres, gpu
    for job in with_failures.jobs:
        if job is not gpu:
            assert "gres/gpu" not in job.alloc_tres, job
    # the rendered config trains on cuda when the run has GPUs: torchtune fails on this machine
    assert yaml.safe_load((experiment.parent / names["gpu"] / "finetune.yaml").read_text())["device"] == "cuda"


def test_slurm_profile_holds_executor_settings_only():
    """profiles/slurm: executor settings, no blanket retries, no resources (those come from config)."""
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["slurm-requeue"] is True
    assert isinstance(profile["jobs"], int) and profile["jobs"] >= 10
    assert "retries" not in profile and "restart-times" not in profile
    assert not {"default-resources", "set-resources", "resources", "set-threads"} & set(profile)
    overlay = yaml.safe_load((REPO / "profiles" / "slurm-sandbox" / "config.yaml").read_text())
    assert "retries" not in overlay
    assert (REPO / "profiles" / "slurm-sandbox" / overlay["configfile"]).is_file()


def print_figures(title: str, run: SlurmRun, names: dict[str, str]) -> None:
    """Overheads from sacct (Submit/Start/End) and the jobs' Slurm logs (all at 1 s resolution).

    in-job overhead: the Slurm job's run time minus its command's (snakemake starting, and
    starting itself again under srun, inside the job); train->eval: from a run's training
    job ending to its evaluation job being submitted (the driver's status polling) and started.
    """
    by_dir = {directory: name for name, directory in names.items()}
    print(f"\n[slurm figures: {title}] snakemake wall time {run.wall_seconds:.0f} s")
    overheads = []
    for job in sorted(run.jobs, key=lambda j: (j.submit, int(j.job_id))):
        window = command_window(job.log)
        timing = f"in Slurm {job.elapsed:3.0f} s"
        if window and job.state == "COMPLETED":
            command = (window[1] - window[0]).total_seconds()
            overheads.append(job.elapsed - command)
            timing += f", command {command:3.0f} s, in-job overhead {job.elapsed - command:2.0f} s"
        run_dir = next((d for d in by_dir if job.wildcards == d or job.wildcards.startswith(f"{d}_")), job.wildcards)
        queued = (job.start - job.submit).total_seconds()
        print(f"  {job.rule:8} {by_dir.get(run_dir, run_dir):6} job {job.job_id:>4} {job.state:9} queued {queued:2.0f} s, {timing}")
    if overheads:
        mean = sum(overheads) / len(overheads)
        print(f"  per-job overhead in Slurm: mean {mean:.1f} s, max {max(overheads):.0f} s (over {len(overheads)} completed jobs)")
    for directory, name in by_dir.items():
        training = [j for j in run.jobs if j.rule == "finetune" and j.wildcards == directory and j.state == "COMPLETED"]
        evaluations = run.evaluations_of(directory)
        if training and evaluations:
            first, end = min(evaluations, key=lambda j: j.submit), training[0].end
            submitted, started = (first.submit - end).total_seconds(), (first.start - end).total_seconds()
            print(f"  train->eval {name}: training ended -> evaluation submitted {submitted:.0f} s, started {started:.0f} s")
