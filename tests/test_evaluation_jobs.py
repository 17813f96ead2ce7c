"""One evaluation job per run: all its (task, checkpoint) pairs in one process, each pair its own
log and sidecar; a changed task redoes only its logs, a failing task fails only itself."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from crash import small_dataset
from e2e_helpers import digest, planned_jobs, row, snakemake, write_summary

from snaketune.evaluate import BUILTIN_TASK_FILE

pytestmark = pytest.mark.e2e

TASK_ROW = "| wordcase | snaketune | wordcase.json (test) | exact match |"
SECOND_TASK = "| spelling | snaketune | wordcase.json (test) | exact match, again |"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, demo_assets):
    """1 fine-tuned run (2 epochs, both evaluated) + its control, on 2 tasks: 6 pairs, 2 jobs."""
    root = tmp_path_factory.mktemp("two-tasks")
    dataset = small_dataset(demo_assets, root / "data")
    summary = write_summary(
        root / "exp", demo_assets, [row("only", 8, "1e-3"), row("base", "-", "-", "Control")], epochs=2, plan="Evaluate all epochs."
    )
    text = summary.read_text().replace(str(demo_assets / "data" / "wordcase.json"), str(dataset))
    summary.write_text(text.replace(TASK_ROW, TASK_ROW + "\n" + SECOND_TASK))
    result = snakemake(summary, "--cores", "2")
    return summary, result


def logs_of(experiment: Path, run: str) -> dict[str, tuple[str, int]]:
    return {name: value for name, value in digest(experiment / run / "eval" / "logs").items() if name.endswith(".eval")}


def test_one_evaluation_job_per_run_evaluates_every_pair(experiment):
    summary, result = experiment
    output = result.stdout + result.stderr
    assert len(re.findall(r"^(?:local)?rule evaluate:", output, re.MULTILINE)) == 2  # one process per run, not one per pair
    logs = summary.parent / "only" / "eval" / "logs"
    assert sorted(p.name for p in logs.glob("*.eval")) == [
        "spelling_epoch_0.eval",
        "spelling_epoch_1.eval",
        "wordcase_epoch_0.eval",
        "wordcase_epoch_1.eval",
    ]
    for log in logs.glob("*.eval"):
        sidecar = json.loads(log.with_name(log.name + ".json").read_text())
        assert sidecar["status"] == "success" and sidecar["checkpoint"] == log.stem.split("_", 1)[1]
    record = json.loads((summary.parent / "only" / "eval" / "evaluations.json").read_text())
    assert sorted((p["task"], p["checkpoint"]) for p in record["pairs"]) == sorted(
        (t, c) for t in ("wordcase", "spelling") for c in ("epoch_0", "epoch_1")
    )
    table = pd.read_csv(summary.parent / "results" / "results.csv")
    assert len(table) == 6
    # the same task, the same checkpoint, loaded once: identical scores for the two task names
    scores = table.set_index(["run", "checkpoint", "task"])["accuracy"]
    assert scores.xs("wordcase", level="task").equals(scores.xs("spelling", level="task"))


def test_a_changed_task_redoes_only_its_own_logs(experiment, tmp_path):
    summary, _ = experiment
    original = summary.read_text()
    before = {run: logs_of(summary.parent, run) for run in ("only", "tiny-llama_base")}
    script = tmp_path / "spelling_task.py"
    shutil.copy(BUILTIN_TASK_FILE, script)
    try:
        summary.write_text(original.replace(SECOND_TASK, SECOND_TASK.replace("| snaketune |", f"| {script} |")))
        plan = snakemake(summary, "-n")
        assert planned_jobs(plan.stdout) == {"scaffold_finetune": 1, "scaffold_control": 1, "evaluate": 2, "report": 1, "all": 1}
        notes = [line for line in (plan.stdout + plan.stderr).splitlines() if line.startswith("snaketune: redo")]
        assert any("only/eval/evaluations.json" in n and "spelling/epoch_0" in n and "wordcase" not in n for n in notes), notes
        snakemake(summary, "--cores", "2")
    finally:
        summary.write_text(original)
    for run, logs in before.items():
        after = logs_of(summary.parent, run)
        for name, value in logs.items():
            if name.startswith("wordcase_"):
                assert after[name] == value, f"{run}/{name} was redone"  # same bytes, same mtime
            else:
                assert after[name] != value, f"{run}/{name} was not redone"
        kept = sorted(p.name for p in (summary.parent / run / "eval" / "logs").glob("superseded-*/*.eval"))
        assert kept == sorted(name for name in logs if name.startswith("spelling_"))


def test_a_failing_task_fails_only_itself(experiment, tmp_path):
    summary, _ = experiment
    original = summary.read_text()
    broken = tmp_path / "broken_task.py"
    broken.write_text(
        "from inspect_ai import task\n\n@task\ndef broken(config_path: str):\n    raise RuntimeError('this task is broken')\n"
    )
    row = "| broken | " + str(broken) + " | wordcase.json (test) | fails |"
    summary.write_text(original.replace(SECOND_TASK, SECOND_TASK + "\n" + row))
    try:
        result = snakemake(summary, "--cores", "2")  # exits 0: every pair has a log or a recorded failure
        logs = summary.parent / "only" / "eval" / "logs"
        for checkpoint in ("epoch_0", "epoch_1"):
            failure = json.loads((logs / f"broken_{checkpoint}.eval.json").read_text())
            assert failure["status"] == "error" and "this task is broken" in failure["error"]
            assert not (logs / f"broken_{checkpoint}.eval").exists()
            assert (logs / f"wordcase_{checkpoint}.eval").is_file()
        assert "evaluation FAILED" in (summary.parent / "only" / "logs" / "evaluate.log").read_text()
        status = json.loads(
            subprocess.run(
                [sys.executable, "-m", "snaketune", "status", str(summary), "--format", "json"], capture_output=True, check=True
            ).stdout
        )
        failed = [(e["run"], e["task"], e["checkpoint"]) for run in status["runs"] for e in run["evaluations"] if e["state"] == "failed"]
        assert sorted(failed) == [("only", "broken", "epoch_0"), ("only", "broken", "epoch_1"), ("tiny-llama_base", "broken", "base")]
        assert "this task is broken" in (summary.parent / "results" / "summary.md").read_text()
        assert "Evaluations: 6/9 done, 3 failed" in (summary.parent / "run-experiment.log").read_text()
        assert "snaketune: 3 failure(s); the next run redoes them" in result.stderr
        # the failures are "changed": the next run redoes exactly those pairs
        plan = snakemake(summary, "-n")
        assert planned_jobs(plan.stdout)["evaluate"] == 2
        assert "broken/epoch_0 (it failed" in plan.stdout + plan.stderr
    finally:
        summary.write_text(original)
