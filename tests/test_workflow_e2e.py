"""The workflow end to end: real snakemake, real torchtune, real inspect-ai on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from e2e_helpers import planned_jobs, row, snakemake, write_summary

pytestmark = pytest.mark.e2e

ROWS = [row("fast", 16, "1e-3"), row("slow", 16, "1e-5"), row("base", "-", "-", "Control")]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, demo_assets):
    """A 2-run + control experiment trained (2 epochs) and evaluated once for the module."""
    directory = tmp_path_factory.mktemp("experiment")
    summary = write_summary(directory, demo_assets, ROWS, epochs=2)
    result = snakemake(summary, "--cores", "2")
    return summary, result


def test_results_table(finished):
    summary, _ = finished
    table = pd.read_csv(summary.parent / "results" / "results.csv")
    assert sorted(table["run"]) == ["lr1e-3", "lr1e-5", "tiny-llama_base"]
    assert set(table.columns) >= {"run", "run_name", "type", "task", "epoch", "lora_rank", "learning_rate", "accuracy", "samples", "log"}
    by_run = table.set_index("run")
    assert by_run.loc["lr1e-3", "type"] == "fine-tuned"
    assert by_run.loc["tiny-llama_base", "type"] == "control"
    assert by_run.loc["lr1e-3", "epoch"] == 1
    assert by_run.loc["lr1e-3", "learning_rate"] == pytest.approx(1e-3)
    assert (table["samples"] > 0).all()
    # a real learning signal: the control copies (lower case), the fast run capitalizes
    assert by_run.loc["tiny-llama_base", "accuracy"] <= 0.2
    assert by_run.loc["lr1e-3", "accuracy"] >= 0.8


def test_run_directories_hold_their_files(finished):
    summary, _ = finished
    experiment = summary.parent
    for run in ("lr1e-3", "lr1e-5"):
        for name in (
            "setup_finetune.yaml",
            "finetune.yaml",
            "finetune.slurm",
            "finetune_manifest.json",
            "eval/evaluate.slurm",
            "eval/logs/wordcase_epoch_1.eval",
        ):
            assert (experiment / run / name).is_file(), name
        manifest = json.loads((experiment / run / "finetune_manifest.json").read_text())
        assert sorted(manifest["epochs"]) == ["epoch_0", "epoch_1"]
        for path in manifest["epochs"].values():
            assert Path(path, "adapter_config.json").is_file()
        assert Path(manifest["output_dir"]) == experiment / "ck-outputs" / f"ck-out-{run}"
    assert (experiment / "tiny-llama_base" / "eval" / "logs" / "wordcase_base.eval").is_file()
    assert not (experiment / "tiny-llama_base" / "finetune.yaml").exists()


def test_evaluation_starts_after_its_own_training(finished):
    from inspect_ai.log import read_eval_log

    summary, _ = finished
    for run in ("lr1e-3", "lr1e-5"):
        trained = (summary.parent / run / "finetune_manifest.json").stat().st_mtime
        log = read_eval_log(str(summary.parent / run / "eval" / "logs" / "wordcase_epoch_1.eval"), header_only=True)
        started = pd.Timestamp(log.eval.created).timestamp()
        assert started >= trained


def test_rerun_is_a_no_op(finished):
    summary, _ = finished
    result = snakemake(summary, "--cores", "2")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_status_tables_are_written_without_rescheduling_anything(finished):
    summary, _ = finished
    original = summary.read_text()
    try:
        subprocess.run([sys.executable, "-m", "snaketune", "status", str(summary), "--write"], check=True, capture_output=True)
        written = summary.read_text()
        assert written.startswith(original.rstrip("\n")) and "## Status\n" in written  # added at the end, nothing else touched
        assert "| fast | completed | - |" in written and "| base | wordcase | base | completed | - |" in written
        result = snakemake(summary, "-n")
        assert "Nothing to be done" in result.stdout + result.stderr
    finally:
        summary.write_text(original)


def test_prose_edits_change_nothing(finished):
    summary, _ = finished
    original = summary.read_text()
    try:
        summary.write_text(original.replace("## Evaluation Plan", "## Notes\nSome prose a person added.\n\n## Evaluation Plan"))
        result = snakemake(summary, "-n")
        assert "Nothing to be done" in result.stdout + result.stderr
    finally:
        summary.write_text(original)


def test_adding_a_row_schedules_only_that_run(finished):
    summary, _ = finished
    original = summary.read_text()
    try:
        summary.write_text(original.replace(ROWS[1], ROWS[1] + "\n" + row("smaller", 8, "1e-5")))
        result = snakemake(summary, "-n")
        jobs = planned_jobs(result.stdout)
        assert jobs == {"scaffold_finetune": 1, "finetune": 1, "evaluate": 1, "report": 1, "all": 1}
        # the new run is named from the new varying set; the existing runs keep their names
        assert "rank8_lr1e-5/finetune_manifest.json" in result.stdout
        assert "rank16_lr1e-3" not in result.stdout
    finally:
        summary.write_text(original)


def changed_plan(summary, old: str, new: str, *targets: str) -> dict[str, int]:
    original = summary.read_text()
    try:
        summary.write_text(original.replace(old, new))
        return planned_jobs(snakemake(summary, "-n", *targets).stdout)
    finally:
        summary.write_text(original)


def test_changed_evaluation_settings_reevaluate_without_retraining(finished):
    summary, _ = finished
    jobs = changed_plan(summary, "**Max tokens:** 16", "**Max tokens:** 12")
    assert jobs == {"scaffold_finetune": 2, "scaffold_control": 1, "evaluate": 3, "report": 1, "all": 1}


def test_changed_training_settings_retrain(finished):
    summary, _ = finished
    jobs = changed_plan(summary, "**Batch size:** 8", "**Batch size:** 4", "lr1e-3/finetune_manifest.json")
    assert jobs == {"scaffold_finetune": 1, "finetune": 1}


def test_reevaluation_keeps_the_superseded_result(finished):
    summary, _ = finished
    experiment = summary.parent
    original = summary.read_text()
    before = (experiment / "lr1e-3" / "eval" / "logs" / "wordcase_epoch_1.eval").read_bytes()
    try:
        summary.write_text(original.replace("**Max tokens:** 16", "**Max tokens:** 14"))
        snakemake(summary, "--cores", "2", "lr1e-3/eval/evaluations.json")
    finally:
        summary.write_text(original)
    kept = list((experiment / "lr1e-3" / "eval" / "logs").glob("superseded-*/wordcase_epoch_1.eval"))
    assert len(kept) == 1 and kept[0].read_bytes() == before
    assert (experiment / "lr1e-3" / "eval" / "logs" / "wordcase_epoch_1.eval").is_file()
    assert (experiment / "lr1e-3" / "finetune_manifest.json").stat().st_mtime <= kept[0].stat().st_mtime  # not retrained


def test_forced_rerun_says_what_it_redoes_and_keeps_it(finished):
    summary, _ = finished
    logs = summary.parent / "lr1e-5" / "eval" / "logs"
    before = (logs / "wordcase_epoch_1.eval").read_bytes()
    plan = snakemake(summary, "-n", "-R", "evaluate", "finetune")
    notes = [line for line in (plan.stdout + plan.stderr).splitlines() if line.startswith("snaketune:")]
    assert any("redoes 3 finished evaluation(s)" in line and "lr1e-5/eval/logs/wordcase_epoch_1.eval" in line for line in notes), notes
    assert any("2 finished training(s) are not repeated" in line for line in notes), notes
    assert not list(logs.glob("superseded-*"))  # the dry run moved nothing

    result = snakemake(summary, "--cores", "2", "--forcerun", "lr1e-5/eval/evaluations.json")
    assert "redoes 1 finished evaluation(s)" in result.stdout + result.stderr
    (kept,) = logs.glob("superseded-*/wordcase_epoch_1.eval")
    assert kept.read_bytes() == before  # the finished result survives the forced rerun
    assert (logs / "wordcase_epoch_1.eval").is_file()


def test_setup_records_the_run(finished):
    summary, _ = finished
    setup = yaml.safe_load((summary.parent / "lr1e-3" / "setup_finetune.yaml").read_text())
    assert setup["run_name"] == "fast"
    assert setup["training"]["learning_rate"] == 1e-3
    registry = sorted(p.name for p in (summary.parent / ".snaketune" / "runs").glob("*.json"))
    assert registry == ["lr1e-3.json", "lr1e-5.json", "tiny-llama_base.json"]


def test_snakemake_report_renders_the_results_and_plots(finished, tmp_path):
    summary, _ = finished
    results = summary.parent / "results"
    for name in ("results.csv", "summary.md", "plots/wordcase_accuracy_by_learning_rate.png", "plots/training_loss.png"):
        assert (results / name).is_file(), name
    assert "| wordcase | lr1e-3 | fast | 1 |" in (results / "summary.md").read_text()  # the best run
    report = tmp_path / "report.html"
    snakemake(summary, "--report", str(report))
    html = report.read_text()
    for name in ("results.csv", "summary.md", "wordcase_accuracy_by_learning_rate.png", "training_loss.png"):
        assert name in html, name
