"""Validation during training through the real workflow: "best by validation loss" evaluates the
epoch of lowest validation loss, decided after training; validation is policy (turning it on or
off retrains nothing). Real snakemake, real torchtune, real inspect-ai on the tiny model."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from e2e_helpers import planned_jobs, row, snakemake, write_summary

pytestmark = pytest.mark.e2e

VALIDATION = "- **Validation during training:** Yes\n"


def overfitting_dataset(path, demo_assets):
    """A validation split that the training makes worse: the training split capitalises (the
    demo's task), the validation split's targets are the inputs unchanged (what the demo's base
    model does). The more the run learns, the higher its validation loss after the first epoch:
    the best epoch is not the last."""
    words = json.loads((demo_assets / "data" / "wordcase.json").read_text())
    validation = [{"input": s["input"], "output": s["input"]} for s in words["validation"][:16]]
    path.write_text(json.dumps({"train": words["train"][:40], "validation": validation, "test": words["test"][:8]}))
    return path


def with_validation(summary, dataset=None):
    text = summary.read_text().replace("- **Batch size:** 8\n", "- **Batch size:** 8\n" + VALIDATION, 1)
    if dataset is not None:
        text = text.replace(text.split("- **Path:** `", 1)[1].split("`", 1)[0], str(dataset), 1)
    summary.write_text(text)


def test_best_by_validation_loss_evaluates_the_epoch_of_lowest_validation_loss(tmp_path, demo_assets):
    dataset = overfitting_dataset(tmp_path / "memorise.json", demo_assets)
    summary = write_summary(
        tmp_path / "exp", demo_assets, [row("hot", 16, "3e-3")], epochs=3, plan="- **Epochs to evaluate:** best and last"
    )
    with_validation(summary, dataset)
    experiment = summary.parent

    dry = snakemake(summary, "-n")
    assert "hot: evaluates the best epoch by validation loss (wordcase_best.eval): best of epochs 0–2, decided after training" in (
        dry.stdout + dry.stderr
    ).replace("lr3e-3", "hot")
    assert planned_jobs(dry.stdout)["finetune"] == 1

    snakemake(summary, "--cores", "2")
    run_dir = next(p.parent for p in experiment.glob("*/finetune_manifest.json"))
    manifest = json.loads((run_dir / "finetune_manifest.json").read_text())
    val = {int(key.removeprefix("epoch_")): entry["val_loss"] for key, entry in manifest["losses"].items()}
    assert sorted(val) == [0, 1, 2] and all(loss > 0 for loss in val.values())
    best = min(val, key=val.get)
    assert best != 2, f"the validation losses {val} do not overfit: the test's premise failed"
    sidecar = json.loads((run_dir / "eval" / "logs" / "wordcase_best.eval.json").read_text())
    assert sidecar["status"] == "success" and sidecar["epoch"] == best
    assert sidecar["model_path"].endswith(f"epoch_{best}")
    table = pd.read_csv(experiment / "results" / "results.csv")
    rows = table.set_index("checkpoint")
    assert sorted(rows.index) == ["best", "epoch_2"]
    assert rows.loc["best", "epoch"] == best and rows.loc["epoch_2", "epoch"] == 2
    assert rows.loc["best", "val_loss"] == pytest.approx(val[best]) and rows.loc["epoch_2", "val_loss"] == pytest.approx(val[2])
    assert rows.loc["best", "train_loss"] == pytest.approx(manifest["losses"][f"epoch_{best}"]["train_loss"])
    summary_md = (experiment / "results" / "summary.md").read_text()
    assert "## Validation" in summary_md and (experiment / "results" / "plots" / "validation_loss.png").is_file()
    # the metric log has the validation losses of the epochs' last steps
    log = "\n".join(p.read_text() for p in (experiment / "ck-outputs" / f"ck-out-{run_dir.name}" / "logs").glob("log_*.txt"))
    assert [line.split("val_loss:")[1].split()[0] for line in log.splitlines() if "val_loss:" in line] == [
        str(val[epoch]) for epoch in range(3)
    ]

    # the validate job's loss of a saved epoch (the merged checkpoint) is the training's, up to rounding
    from snaketune import validate

    config = yaml.safe_load((run_dir / "finetune.yaml").read_text())
    recomputed = validate.validation_losses(run_dir, [best], manifest, config)
    assert recomputed[f"epoch_{best}"] == pytest.approx(val[best], rel=1e-5)

    # done is done: nothing to redo, and nothing said about deciding
    again = snakemake(summary, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr and "decided after training" not in again.stdout + again.stderr
    # validation is policy: turning it off re-renders the run's files, retrains and re-evaluates nothing
    summary.write_text(summary.read_text().replace(VALIDATION, "").replace("best and last", "last"))
    off = planned_jobs(snakemake(summary, "-n").stdout)
    assert "finetune" not in off and "evaluate" not in off, off


def test_best_without_validation_is_rejected_at_its_line(tmp_path, demo_assets):
    summary = write_summary(
        tmp_path / "exp", demo_assets, [row("cold", 8, "1e-3")], plan="- **Epochs to evaluate:** Best by validation loss"
    )
    line = next(number for number, text in enumerate(summary.read_text().splitlines(), 1) if text.startswith("| cold |"))
    result = snakemake(summary, "-n", check=False)
    assert result.returncode != 0
    assert (
        f"{summary}, line {line}: run 'cold' evaluates its best epoch by validation loss (wordcase), which needs validation during training"
        in (result.stdout + result.stderr)
    )


def test_turning_validation_on_for_a_finished_run_validates_its_epochs_without_retraining(tmp_path, demo_assets):
    summary = write_summary(tmp_path / "exp", demo_assets, [row("done", 8, "1e-3")], epochs=2)
    experiment = summary.parent
    snakemake(summary, "--cores", "2")
    run_dir = (
        experiment / "lr1e-3" if (experiment / "lr1e-3").is_dir() else next(p.parent for p in experiment.glob("*/finetune_manifest.json"))
    )
    manifest = (run_dir / "finetune_manifest.json").read_text()
    assert all(entry["val_loss"] is None for entry in json.loads(manifest)["losses"].values())

    # validation on, and the best epoch asked for: a validate job, no training
    with_validation(summary)
    summary.write_text(summary.read_text().replace("Evaluate the last epoch.", "- **Epochs to evaluate:** best and last"))
    jobs = planned_jobs(snakemake(summary, "-n").stdout)
    assert jobs.get("validate") == 1 and "finetune" not in jobs, jobs
    snakemake(summary, "--cores", "2")
    assert (run_dir / "finetune_manifest.json").read_text() == manifest  # not retrained
    record = json.loads((run_dir / "validation_losses.json").read_text())
    val = {int(key.removeprefix("epoch_")): loss for key, loss in record["val_losses"].items()}
    assert sorted(val) == [0, 1] and all(loss > 0 for loss in val.values())
    table = pd.read_csv(experiment / "results" / "results.csv").set_index("checkpoint")
    assert table.loc["epoch_1", "val_loss"] == pytest.approx(val[1])
    best = min(val, key=val.get)
    assert table.loc["best", "epoch"] == best and table.loc["best", "val_loss"] == pytest.approx(val[best])
    # done is done
    again = snakemake(summary, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]
