"""Full-size models through the unchanged mapping: scaffold -> LoRA -> inspect-ai -> results.csv.

A random-weight Llama-3.2-1B-Instruct in hub layout (published config.json, bf16 safetensors, the
real Llama 3 tokenizer, the official chat template), built once per session (snaketune.hub_models;
`SNAKETUNE_TEST_ASSETS` keeps it between sessions), trained 1 epoch x 2 steps on the CPU and evaluated
with its base control on 3 samples. The checkpoints (~5 GB) are deleted afterwards. `make test-full`
adds Qwen2.5-0.5B-Instruct (synthetic tokenizer of the real format and size) and a resume.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from e2e_helpers import snakemake

from snaketune import hub_models, prompts

pytestmark = pytest.mark.e2e
DATA = Path(__file__).parent / "data"

SUMMARY = """# Experiment: full_size_{slug}

## All Runs
| Run Name | Model | LoRA Rank | Learning Rate | Type |
|----------|-------|-----------|---------------|------|
| lora | {model} | 8 | 1e-4 | Fine-tuned |
| base | {model} | - | - | Control |

## Resources

### Models
- **{model}**: `{path}`

### Dataset
- **Path:** `{dataset}`

### Evaluation Tasks
| Task Name | Script | Dataset | Description |
|-----------|--------|---------|-------------|
| wordcase | snaketune | words (test) | exact match |

## Evaluation Plan
{plan}

## Configuration
- **Epochs:** {epochs}
- **Batch size:** 2
- **GPUs:** 0
- **System prompt:** ""
- **Max tokens:** 4
"""

WORDS = ["apple", "berry", "cherry", "damson", "elder", "fig", "grape", "hazel", "lemon", "mango", "olive", "peach", "quince"]


def hub_model(tmp_path_factory, name: str, tokenizer: str, template: str):
    """Build (or reuse, under `SNAKETUNE_TEST_ASSETS`) a hub-layout model; one built in the session's
    temporary folder is deleted at the session's end (pytest keeps the last three such folders)."""
    kept = os.environ.get("SNAKETUNE_TEST_ASSETS")
    cache = Path(kept or tmp_path_factory.mktemp("hub-models")).absolute()
    template_text = (DATA / "chat_templates" / template).read_text()
    yield hub_models.build_hub_model(DATA / "models" / name, cache / "hub" / name, template_text, tokenizer)
    if not kept:
        shutil.rmtree(cache / "hub" / name, ignore_errors=True)


@pytest.fixture(scope="session")
def llama_1b(tmp_path_factory) -> Iterator[Path]:
    yield from hub_model(tmp_path_factory, "Llama-3.2-1B-Instruct", "llama3", "Llama-3.2-Instruct.jinja")


@pytest.fixture(scope="session")
def qwen_0_5b(tmp_path_factory) -> Iterator[Path]:
    yield from hub_model(tmp_path_factory, "Qwen2.5-0.5B-Instruct", "qwen2_5", "Qwen2.5-Instruct.jinja")


def write_experiment(directory: Path, model: str, model_dir: Path, epochs: int = 1, train_rows: int = 4) -> Path:
    """Batch 2 on `train_rows` rows: train_rows / 2 steps per epoch; 3 test samples."""
    directory.mkdir(parents=True)
    rows = [{"input": word, "output": word.capitalize()} for word in WORDS]
    dataset = directory / "words.json"
    dataset.write_text(json.dumps({"train": rows[:train_rows], "validation": rows[8:10], "test": rows[10:13]}))
    summary = directory / "experiment_summary.md"
    plan = "All runs are evaluated at every epoch." if epochs > 1 else "Evaluate the last epoch."
    summary.write_text(
        SUMMARY.format(slug=model.split("-")[0].lower(), model=model, path=model_dir, dataset=dataset, epochs=epochs, plan=plan)
    )
    return summary


@pytest.fixture
def cleanup_checkpoints(tmp_path):
    yield
    shutil.rmtree(tmp_path / "experiment" / "ck-outputs", ignore_errors=True)  # ~5 GB per epoch on the CPU


def assert_trained_and_evaluated(summary: Path, builder: str, model_type: str, checkpoints: list[str]) -> pd.DataFrame:
    from inspect_ai.log import read_eval_log

    experiment = summary.parent
    table = pd.read_csv(experiment / "results" / "results.csv")
    assert sorted(table["checkpoint"]) == sorted(checkpoints + ["base"])
    assert (table["samples"] == 3).all() and (table["status"] == "success").all()
    finetune = yaml.safe_load((experiment / "lora" / "finetune.yaml").read_text())
    assert finetune["model"]["_component_"] == builder
    assert finetune["checkpointer"]["model_type"] == model_type
    setup = yaml.safe_load((experiment / "lora" / "setup_finetune.yaml").read_text())
    for checkpoint in checkpoints:
        log = read_eval_log(str(experiment / "lora" / "eval" / "logs" / f"wordcase_{checkpoint}.eval"), header_only=True)
        model_args = log.eval.model_args
        assert model_args["tokenizer_call_args"] == {"add_special_tokens": False}
        assert model_args.get("chat_template") == prompts.hf_model_args(setup).get("chat_template")
    manifest = json.loads((experiment / "lora" / "finetune_manifest.json").read_text())
    assert sorted(manifest["epochs"]) == checkpoints
    [finding] = [json.loads(p.read_text()) for p in (experiment / ".snaketune" / "parity").glob("*.json")]
    assert finding["identical"], finding
    return table


def test_llama_3_2_1b_instruct_full_size(llama_1b, tmp_path, cleanup_checkpoints):
    summary = write_experiment(tmp_path / "experiment", "Llama-3.2-1B-Instruct", llama_1b)
    result = snakemake(summary, "--cores", "1", timeout=3600)
    assert "cannot hold them" not in result.stderr  # 1.24B fits the default resources
    assert_trained_and_evaluated(summary, "torchtune.models.llama3_2.lora_llama3_2_1b", "LLAMA3_2", ["epoch_0"])
    steps = [
        line
        for path in (tmp_path / "experiment" / "ck-outputs" / "ck-out-lora" / "logs").glob("log_*.txt")
        for line in path.read_text().splitlines()
    ]
    assert len([line for line in steps if "loss:" in line]) == 2  # 4 rows, batch 2: 2 steps


@pytest.mark.full
def test_qwen2_5_0_5b_instruct_full_size(qwen_0_5b, tmp_path, cleanup_checkpoints):
    summary = write_experiment(tmp_path / "experiment", "Qwen2.5-0.5B-Instruct", qwen_0_5b)
    snakemake(summary, "--cores", "1", timeout=3600)
    assert_trained_and_evaluated(summary, "torchtune.models.qwen2_5.lora_qwen2_5_0_5b", "QWEN2", ["epoch_0"])


@pytest.mark.full
def test_llama_3_2_1b_instruct_resumes_after_a_killed_training(llama_1b, tmp_path, cleanup_checkpoints):
    """2 epochs; the training is killed after epoch 0 is saved; the rerun resumes from it."""
    import signal
    import subprocess
    import sys

    summary = write_experiment(tmp_path / "experiment", "Llama-3.2-1B-Instruct", llama_1b, epochs=2)
    experiment = summary.parent
    # the whole workflow is killed right after epoch 0 is saved (snaketune.faults)
    env = dict(os.environ, HF_HUB_OFFLINE="1", SNAKETUNE_FAULT="recipe:after-epoch-0")
    snakemake_bin = str(Path(sys.executable).parent / "snakemake")
    command = [snakemake_bin, "--cores", "1", "--config", f"experiment={summary}"]
    process = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[1], env=env, start_new_session=True)
    assert process.wait(timeout=3600) == -signal.SIGKILL
    snakemake(summary, "--unlock")
    snakemake(summary, "--cores", "1", timeout=3600)
    assert_trained_and_evaluated(summary, "torchtune.models.llama3_2.lora_llama3_2_1b", "LLAMA3_2", ["epoch_0", "epoch_1"])
    log = (experiment / "lora" / "logs" / "finetune.log").read_text()
    assert "resuming from epoch_0" in log and "resume_from_checkpoint=True" in log
    # torchtune's step count continues: the resumed process logs from step 3 (2 steps per epoch)
    first_steps = sorted(
        int(path.read_text().split("Step ", 1)[1].split(" ", 1)[0])
        for path in (experiment / "ck-outputs" / "ck-out-lora" / "logs").glob("log_*.txt")
        if "Step " in path.read_text()
    )
    assert first_steps == [1, 3], first_steps


@pytest.mark.full
@pytest.mark.parametrize("family", ["llama", "qwen"])
def test_full_size_parity(family, llama_1b, qwen_0_5b, tmp_path):
    """The built-in task's prompts on the full-size hub layouts (the scaffold job's check)."""
    from snaketune.parse import read_summary
    from snaketune.plan import plan_experiment
    from snaketune.scaffold import write_run_files

    model, model_dir = ("Llama-3.2-1B-Instruct", llama_1b) if family == "llama" else ("Qwen2.5-0.5B-Instruct", qwen_0_5b)
    summary = write_experiment(tmp_path / "experiment", model, model_dir)
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "config" / "config.yaml").read_text())
    run = plan_experiment(read_summary(summary), config, {}).runs[0]
    write_run_files(run.setup, summary.parent / run.run_dir)
    parity = prompts.check(summary.parent / run.run_dir / "setup_finetune.yaml", "wordcase")
    assert parity.identical, parity.message()
