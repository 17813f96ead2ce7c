"""Rendering: every value of the row and of the common configuration reaches the files."""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import DATA

from snaketune.parse import read_summary
from snaketune.plan import plan_experiment
from snaketune.render import RESUMABLE_RECIPE, finetune_config
from snaketune.scaffold import write_run_files


def plan(path: Path, config: dict):
    return plan_experiment(read_summary(path), config, {})


def scaffold(tmp_path: Path, config: dict, summary: Path | None = None, run_index: int = 0):
    experiment_plan = plan(summary or DATA / "new_generation.md", config)
    run = experiment_plan.runs[run_index]
    write_run_files(run.setup, tmp_path / run.run_dir)
    return run, tmp_path / run.run_dir


def test_finetune_yaml_carries_every_value(tmp_path, config):
    run, run_dir = scaffold(tmp_path, config, run_index=3)  # rank 32, lr 3e-4
    assert run.run_dir == "rank32_lr3e-4"
    tune = yaml.safe_load((run_dir / "finetune.yaml").read_text())
    assert tune["model"]["_component_"] == "torchtune.models.qwen2_5.lora_qwen2_5_0_5b"
    assert tune["model"]["lora_rank"] == 32
    assert tune["model"]["lora_alpha"] == 64
    assert tune["optimizer"]["lr"] == 3e-4
    assert tune["batch_size"] == 8
    assert tune["epochs"] == 2
    assert tune["seed"] == 42
    assert tune["dataset"]["data_files"] == "/data/tasks/wordcase/words_6L_500.json"
    assert tune["dataset"]["field"] == "train"
    assert tune["dataset"]["source"] == "json"
    assert tune["dataset"]["new_system_prompt"] == ""
    assert tune["dataset"]["packed"] is False
    assert tune["tokenizer"]["max_seq_len"] is None  # an integer would mask the final EOS label
    assert tune["tokenizer"]["path"] == "/data/models/Qwen2.5-0.5B-Instruct/vocab.json"
    assert tune["tokenizer"]["merges_file"] == "/data/models/Qwen2.5-0.5B-Instruct/merges.txt"
    assert tune["checkpointer"]["checkpoint_dir"] == "/data/models/Qwen2.5-0.5B-Instruct"
    assert tune["checkpointer"]["model_type"] == "QWEN2"
    assert tune["output_dir"] == "/scratch/me/ck-outputs/ck-out-rank32_lr3e-4"
    assert tune["checkpointer"]["output_dir"] == tune["output_dir"]
    assert tune["device"] == "cuda" and tune["dtype"] == "bf16"
    assert tune["resume_from_checkpoint"] is False
    setup = yaml.safe_load((run_dir / "setup_finetune.yaml").read_text())
    assert setup["run_name"] == "Qwen2.5-0.5B_rank32_lr3e-4"
    assert setup["evaluation"]["tasks"]["wordcase"]["checkpoints"] == ["epoch_1"]


def test_learning_rate_text_keeps_its_value(tmp_path, config, summary_file):
    text = (DATA / "new_generation.md").read_text().replace("| 4 | 1e-4 |", "| 4 | 1e-5 |")
    run, run_dir = scaffold(tmp_path, config, summary_file(text))
    tune_text = (run_dir / "finetune.yaml").read_text()
    assert "lr: 1.0e-05" in tune_text
    assert yaml.safe_load(tune_text)["optimizer"]["lr"] == 1e-5


def test_common_configuration_values_reach_torchtune(tmp_path, config, summary_file):
    text = (
        (DATA / "new_generation.md")
        .read_text()
        .replace(
            '- **System prompt:** ""',
            '- **System prompt:** "Answer with the word."\n- **Dataset packing:** yes\n- **LoRA alpha:** 12\n- **Seed:** 7\n- **GPUs:** 0',
        )
    )
    run, run_dir = scaffold(tmp_path, config, summary_file(text))
    tune = yaml.safe_load((run_dir / "finetune.yaml").read_text())
    assert tune["dataset"]["new_system_prompt"] == "Answer with the word."
    assert tune["dataset"]["packed"] is True
    assert tune["tokenizer"]["max_seq_len"] == config["training"]["max_seq_len"]  # packing needs it
    assert tune["model"]["lora_alpha"] == 12
    assert tune["seed"] == 7
    assert tune["device"] == "cpu" and tune["dtype"] == "fp32"
    assert "--gpus" not in (run_dir / "finetune.slurm").read_text()


def test_parquet_dataset(tmp_path, config, summary_file):
    text = (DATA / "new_generation.md").read_text().replace("/data/tasks/wordcase/words_6L_500.json", "/data/tasks/wordcase/parquet")
    run, run_dir = scaffold(tmp_path, config, summary_file(text))
    dataset = yaml.safe_load((run_dir / "finetune.yaml").read_text())["dataset"]
    assert dataset["source"] == "parquet"
    assert dataset["data_files"] == "/data/tasks/wordcase/parquet/train.parquet"


def test_slurm_script_requests_the_configured_resources(tmp_path, config):
    config = copy.deepcopy(config)
    config["resources"]["finetune"].update(
        partition="gpu", account="ml", constraint="a100", qos="short", time=90, mem_mb=64000, cpus=8, gpus=1
    )
    config["environment"].update(modules=["cuda/12.4"], conda_env="ttenv")
    run, run_dir = scaffold(tmp_path, config)
    script = (run_dir / "finetune.slurm").read_text()
    subprocess.run(["bash", "-n", str(run_dir / "finetune.slurm")], check=True)
    for line in [
        "#SBATCH --job-name=ft-rank4_lr1e-4",
        "#SBATCH --time=01:30:00",
        "#SBATCH --mem=64000M",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --gpus=1",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=ml",
        "#SBATCH --constraint=a100",
        "#SBATCH --qos=short",
        f"#SBATCH --output={run_dir}/logs/finetune-%j.out",
        # requeued by SLURM (preemption) and by itself before the time limit; appends its output
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        "module load cuda/12.4",
        "conda activate ttenv",
        f"tune run {RESUMABLE_RECIPE} --config {run_dir}/finetune.yaml",
    ]:
        assert line in script
    assert os.access(run_dir / "finetune.slurm", os.X_OK)
    evals = sorted(p.name for p in (run_dir / "eval").glob("*.slurm"))
    assert evals == ["evaluate.slurm"]  # one evaluation job per run
    subprocess.run(["bash", "-n", str(run_dir / "eval" / evals[0])], check=True)


def test_several_gpus_use_the_distributed_recipe(tmp_path, config, summary_file):
    text = (DATA / "new_generation.md").read_text().replace("- **Epochs:** 2", "- **Epochs:** 2\n- **GPUs:** 4")
    run, run_dir = scaffold(tmp_path, config, summary_file(text))
    script = (run_dir / "finetune.slurm").read_text()
    assert "tune run --nproc_per_node 4 lora_finetune_distributed --config" in script
    assert "#SBATCH --gpus=4" in script
    subprocess.run(["bash", "-n", str(run_dir / "finetune.slurm")], check=True)


HOSTILE = "$(touch PWNED) `touch PWNED2` ' \" ; touch PWNED3 \\ {{ x }}"


def test_hostile_values_reach_yaml_exactly_and_never_run(tmp_path, config, summary_file):
    text = (DATA / "new_generation.md").read_text()
    text = text.replace('- **System prompt:** ""', f'- **System prompt:** "{HOSTILE}"')
    text = text.replace("| Qwen2.5-0.5B_rank4_lr1e-4 |", "| r$(touch PWNED4);`touch PWNED5`'\" |")
    run, run_dir = scaffold(tmp_path, config, summary_file(text))
    tune = yaml.safe_load((run_dir / "finetune.yaml").read_text())
    assert tune["dataset"]["new_system_prompt"] == HOSTILE
    assert yaml.safe_load((run_dir / "setup_finetune.yaml").read_text())["system_prompt"] == HOSTILE
    # Run the rendered scripts with `python` standing in as a no-op: any payload would create a file.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "python").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    for script in [run_dir / "finetune.slurm", *(run_dir / "eval").glob("*.slurm")]:
        subprocess.run(["bash", "-n", str(script)], check=True)
        text = script.read_text().replace("source ", "true ")  # the venv activation is not under test
        (tmp_path / "probe.sh").write_text(text)
        subprocess.run(["bash", str(tmp_path / "probe.sh")], check=True, cwd=tmp_path, env=env)
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))


@pytest.mark.parametrize("gpus", [0, 1])
def test_eval_script_matches_evaluate_resources(tmp_path, config, summary_file, gpus):
    text = (DATA / "new_generation.md").read_text().replace("- **Epochs:** 2", f"- **Epochs:** 2\n- **GPUs:** {gpus}")
    run, run_dir = scaffold(tmp_path, config, summary_file(text))
    script = (run_dir / "eval" / "evaluate.slurm").read_text()
    assert ("#SBATCH --gpus=1" in script) == (gpus == 1)
    assert f"#SBATCH --time=00:{config['resources']['evaluate']['time']:02d}:00" in script
    assert f"python -m snaketune evaluate --setup {run_dir}/setup_finetune.yaml" in script
    assert "wordcase/epoch_1" in script  # the pairs it evaluates, in its header


def test_validation_during_training_is_rendered_for_the_recipe(config):
    experiment_plan = plan(DATA / "old_generation.md", config)  # "Validation during training: Yes"
    assert not [w for w in experiment_plan.warnings if "validation during training" in w]
    run = experiment_plan.runs[0]
    rendered = finetune_config(run.setup)
    assert rendered["validation"] is True and rendered["validate_every_steps"] == 0
    assert rendered["dataset_val"] == {**rendered["dataset"], "field": "validation", "packed": False}
    # validation is policy: neither the training digest nor the checkpoint fingerprint sees it
    from snaketune.finetune import fingerprint
    from snaketune.state import training_digest

    off = {**run.setup, "training": {**run.setup["training"], "validation": False, "validate_every_steps": 0}}
    on = {**run.setup, "training": {**run.setup["training"], "validate_every_steps": 7}}
    assert training_digest(off) == training_digest(on)
    assert "dataset_val" not in finetune_config(off)
    assert fingerprint(finetune_config(off)) == fingerprint(finetune_config(on))


def test_validation_with_the_distributed_recipe_is_warned_about(config, tmp_path):
    summary = tmp_path / "experiment_summary.md"
    summary.write_text((DATA / "old_generation.md").read_text().replace("- **GPUs:** 1", "- **GPUs:** 2"))
    experiment_plan = plan(summary, config)
    assert [w for w in experiment_plan.warnings if "validation during training" in w] == [
        f"{summary}, line 49: validation during training is computed by snaketune's single-device recipe only; lora_finetune_distributed trains without it"
    ]


def test_a_replaced_evaluation_log_is_kept_not_deleted(tmp_path):
    from snaketune.scaffold import keep_aside

    logs = tmp_path / "eval" / "logs"
    logs.mkdir(parents=True)
    (logs / "word_epoch_0.eval").write_bytes(b"first")
    first = keep_aside(logs / "word_epoch_0.eval")
    (logs / "word_epoch_0.eval").write_bytes(b"second")
    second = keep_aside(logs / "word_epoch_0.eval")
    assert first.read_bytes() == b"first" and second.read_bytes() == b"second"  # a folder per call: nothing overwritten
    assert first.parent != second.parent and first.parent.name.startswith("superseded-")
    assert not (logs / "word_epoch_0.eval").exists()


def test_where_metrics_are_logged_does_not_change_a_trainings_identity():
    from snaketune.finetune import fingerprint

    config = {"optimizer": {"lr": 0.001}, "metric_logger": {"_component_": "torchtune.training.metric_logging.DiskLogger"}}
    with_wandb = {**config, "metric_logger": {"_component_": "snaketune.metric_logging.DiskAndWandBLogger"}, "resume_from_checkpoint": True}
    assert fingerprint(with_wandb) == fingerprint(config)  # turning W&B on still resumes into the checkpoints
    assert fingerprint({**config, "optimizer": {"lr": 0.01}}) != fingerprint(config)
