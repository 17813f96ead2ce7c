"""Planning and scaffolding with real snakemake, on a machine without the cluster's files."""

from __future__ import annotations

import shutil

import pytest
import yaml
from conftest import DATA
from e2e_helpers import planned_jobs, snakemake


@pytest.fixture
def cluster_summary(tmp_path):
    """The new-generation example: its model, dataset and task script don't exist here."""
    path = tmp_path / "exp" / "experiment_summary.md"
    path.parent.mkdir()
    shutil.copy(DATA / "new_generation.md", path)
    return path


def test_dry_run_plans_everything_and_writes_nothing(cluster_summary):
    result = snakemake(cluster_summary, "-n")
    assert planned_jobs(result.stdout) == {
        "scaffold_finetune": 4,
        "scaffold_control": 1,
        "finetune": 4,
        "evaluate": 5,
        "report": 1,
        "all": 1,
    }
    for missing in ("model Qwen2.5-0.5B-Instruct path /data/models/Qwen2.5-0.5B-Instruct", "dataset path", "task wordcase script path"):
        assert (result.stdout + result.stderr).count(missing) == 1, missing
    assert "Quick Reference names experiment directory" in result.stdout + result.stderr
    assert written_by_us(cluster_summary.parent) == ["experiment_summary.md"]


def written_by_us(directory):
    """What is in the experiment directory besides Snakemake's own state folder."""
    return sorted(p.name for p in directory.iterdir() if p.name != ".snakemake")


def test_scaffold_writes_every_run_without_the_model(cluster_summary):
    snakemake(cluster_summary, "scaffold", "--cores", "1")
    experiment = cluster_summary.parent
    runs = sorted(p.name for p in experiment.iterdir() if (p / "setup_finetune.yaml").exists())
    assert runs == ["Qwen2.5-0.5B_base", "rank32_lr1e-4", "rank32_lr3e-4", "rank4_lr1e-4", "rank4_lr3e-4"]
    assert (experiment / "rank4_lr1e-4" / "finetune.slurm").is_file()
    assert not (experiment / "Qwen2.5-0.5B_base" / "finetune.yaml").exists()
    setup = yaml.safe_load((experiment / "Qwen2.5-0.5B_base" / "setup_finetune.yaml").read_text())
    assert setup["type"] == "control"
    assert (experiment / "Qwen2.5-0.5B_base" / "eval" / "evaluate.slurm").is_file()
    # nothing was trained or evaluated, and the next plan only has the real work left
    assert planned_jobs(snakemake(cluster_summary, "-n").stdout) == {"finetune": 4, "evaluate": 5, "report": 1, "all": 1}


def test_rejected_summary_writes_nothing(cluster_summary):
    text = cluster_summary.read_text().replace("| 32 | 3e-4 |", "| 32 | fast |")
    cluster_summary.write_text(text)
    result = snakemake(cluster_summary, "scaffold", "--cores", "1", check=False)
    assert result.returncode != 0
    assert f"{cluster_summary}, line 13: learning rate 'fast' is not a number" in result.stdout + result.stderr
    assert written_by_us(cluster_summary.parent) == ["experiment_summary.md"]


def test_training_job_fails_early_where_the_model_is_missing(cluster_summary):
    result = snakemake(cluster_summary, "--cores", "1", "rank4_lr1e-4/finetune_manifest.json", check=False)
    assert result.returncode != 0
    log = (cluster_summary.parent / "rank4_lr1e-4" / "logs" / "finetune.log").read_text()
    assert "missing on this machine: /data/models/Qwen2.5-0.5B-Instruct" in log


def test_a_batch_larger_than_the_training_split_is_warned_about_at_its_line(tmp_path, demo_assets):
    from e2e_helpers import row, write_summary

    summary = write_summary(tmp_path / "exp", demo_assets, [row("big", 8, "1e-3")])
    summary.write_text(summary.read_text().replace("- **Batch size:** 8", "- **Batch size:** 1000"))
    line = summary.read_text().splitlines().index("- **Batch size:** 1000") + 1
    result = snakemake(summary, "-n")
    expected = f"{summary}, line {line}: run 'big': batch size 1000 x 1 accumulation is larger than the 'train' split"
    assert expected in result.stdout + result.stderr and "(400 samples)" in result.stdout + result.stderr
    assert not (tmp_path / "exp" / ".snaketune").exists()  # a dry run writes no cache
    snakemake(summary, "scaffold", "--cores", "1")
    sizes = yaml.safe_load((tmp_path / "exp" / ".snaketune" / "dataset_sizes.json").read_text())
    assert list(sizes.values()) == [400]  # read once, then served from the cache


def _with_validation(summary):
    """Turn on "Validation during training" in a summary; returns the line it is on."""
    text = summary.read_text().replace("- **Batch size:** 8\n", "- **Batch size:** 8\n- **Validation during training:** Yes\n", 1)
    summary.write_text(text)
    return text.splitlines().index("- **Validation during training:** Yes") + 1


def test_validation_without_a_validation_split_is_rejected_with_file_line_and_cause(tmp_path, demo_assets):
    import json

    from e2e_helpers import row, write_summary

    summary = write_summary(tmp_path / "exp", demo_assets, [row("val", 8, "1e-3")])
    line = _with_validation(summary)
    splits = json.loads((demo_assets / "data" / "wordcase.json").read_text())
    dataset = tmp_path / "no_validation.json"
    dataset.write_text(json.dumps({"train": splits["train"][:20], "test": splits["test"][:5]}))
    summary.write_text(summary.read_text().replace(str(demo_assets / "data" / "wordcase.json"), str(dataset)))
    result = snakemake(summary, "-n", check=False)
    assert result.returncode != 0
    expected = f"{summary}, line {line}: validation during training is on, but dataset {dataset} has no 'validation' split"
    assert expected in result.stdout + result.stderr
    # an empty split is rejected too
    dataset.write_text(json.dumps({"train": splits["train"][:20], "validation": [], "test": splits["test"][:5]}))
    result = snakemake(summary, "-n", check=False)
    assert result.returncode != 0
    assert f"{summary}, line {line}: validation during training is on, but the 'validation' split of {dataset} is empty" in (
        result.stdout + result.stderr
    )
    assert written_by_us(summary.parent) == ["experiment_summary.md"]


def test_validation_on_a_dataset_not_here_is_a_warning_and_the_job_fails_early(cluster_summary, tmp_path):
    import json

    from snaketune.finetune import FinetuneError, _check_inputs

    text = cluster_summary.read_text()
    line = len(text[: text.index("- **Epochs:**")].splitlines()) + 1
    cluster_summary.write_text(text.replace("- **Epochs:**", "- **Validation during training:** Yes\n- **Epochs:**", 1))
    result = snakemake(cluster_summary, "-n")
    assert f"{cluster_summary}, line {line}: validation during training is on; dataset" in result.stdout + result.stderr
    assert "is not on this machine, so its 'validation' split is not checked here" in result.stdout + result.stderr
    # where the job runs: a dataset without the split fails before any training
    dataset = tmp_path / "no_validation.json"
    dataset.write_text(json.dumps({"train": [{"input": "a", "output": "A"}]}))
    config = {
        "checkpointer": {"checkpoint_dir": str(tmp_path)},
        "dataset": {"data_files": str(dataset)},
        "validation": True,
        "dataset_val": {"source": "json", "data_files": str(dataset), "field": "validation"},
    }
    with pytest.raises(FinetuneError, match=f"validation is on, but {dataset} has no 'validation' split"):
        _check_inputs(config)
