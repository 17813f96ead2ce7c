"""``snaketune design``: summaries written from a grid, and ``--extend`` adding only new runs.

Paths of models and data don't exist here: planning works without them, as on a laptop.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys

import pytest
from conftest import DATA, REPO
from e2e_helpers import planned_jobs, snakemake

from snaketune import cli
from snaketune.design import DesignError, extend_summary, new_summary
from snaketune.parse import read_summary
from snaketune.state import evaluation_digest, sidecar_path, training_digest, write_record
from snaketune.workflow import load_plan

LLAMA = "Llama-3.2-1B-Instruct=/nowhere/models/Llama-3.2-1B-Instruct"
QWEN = "Qwen2.5-0.5B-Instruct=/nowhere/models/Qwen2.5-0.5B-Instruct"


@pytest.fixture
def design(tmp_path, config):
    """Write a new summary; keyword arguments override a 3 x 2 rank/lr grid on Llama 3.2 1B."""

    def write(**overrides):
        arguments = {
            "out": tmp_path / "exp" / "experiment_summary.md",
            "name": "wordcase_grid",
            "models": [LLAMA],
            "dataset": "/nowhere/data/words.json",
            "tasks": ["wordcase=snaketune"],
            "epochs": 2,
            "grid": ["LoRA Rank=4,8,16", "Learning Rate=1e-5,5e-5"],
            "config": config,
            **overrides,
        }
        new_summary(**arguments)
        return arguments["out"]

    return write


def grid_of(summary):
    """(type, model, parameters) of every run, as the workflow's parser reads the file."""
    return [(run.type, run.model, run.params) for run in read_summary(summary).runs]


def test_product_reads_back_as_the_grid(design, config):
    summary = design()
    experiment = read_summary(summary)
    assert experiment.name == "wordcase_grid"
    assert experiment.columns == ["lora_rank", "learning_rate"]
    product = [{"lora_rank": r, "learning_rate": lr} for r, lr in itertools.product(["4", "8", "16"], ["1e-5", "5e-5"])]
    assert grid_of(summary) == [("fine-tuned", "Llama-3.2-1B-Instruct", p) for p in product] + [("control", "Llama-3.2-1B-Instruct", {})]
    assert [run.name for run in experiment.runs] == [
        "rank4_lr1e-5",
        "rank4_lr5e-5",
        "rank8_lr1e-5",
        "rank8_lr5e-5",
        "rank16_lr1e-5",
        "rank16_lr5e-5",
        "Llama-3.2-1B_base",
    ]
    assert experiment.models == {"Llama-3.2-1B-Instruct": "/nowhere/models/Llama-3.2-1B-Instruct"}
    assert experiment.dataset == "/nowhere/data/words.json"
    assert [(task.name, task.script) for task in experiment.tasks] == [("wordcase", "snaketune")]
    plan = load_plan(summary, config)
    # the run names are the directories naming.py gives the runs
    assert [run.run_dir for run in plan.runs] == [run.name for run in experiment.runs]
    assert {run.setup["training"]["learning_rate"] for run in plan.runs if run.fine_tuned} == {1e-5, 5e-5}
    assert [e.checkpoint for run in plan.runs for e in run.evaluations] == ["epoch_1"] * 6 + ["base"]


def test_paired_factors_are_zipped_and_crossed_with_the_rest(design):
    summary = design(
        models=[LLAMA, QWEN],
        grid=["Batch Size=4,8"],
        paired=["LoRA Rank=4,8,16", "lr=1e-4,5e-5,1e-5"],
    )
    pairs = [("4", "1e-4"), ("8", "5e-5"), ("16", "1e-5")]
    expected = [
        ("fine-tuned", model, {"batch_size": bs, "lora_rank": rank, "learning_rate": lr})
        for model in ("Llama-3.2-1B-Instruct", "Qwen2.5-0.5B-Instruct")
        for bs in ("4", "8")
        for rank, lr in pairs
    ]
    controls = [("control", "Llama-3.2-1B-Instruct", {}), ("control", "Qwen2.5-0.5B-Instruct", {})]
    assert grid_of(summary) == expected + controls
    names = [run.name for run in read_summary(summary).runs]
    assert names[0] == "Llama-3.2-1B_bs4_rank4_lr1e-4" and names[-1] == "Qwen2.5-0.5B_base"


def test_grid_file_keeps_values_as_written(design, tmp_path):
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text("grid:\n  LoRA Rank: [4, 8]\npaired:\n  Learning Rate: [1e-5, 0.0001]\n  Batch Size: [16, 32]\n")
    summary = design(grid=[], grid_file=grid_file)
    assert [params for _type, _model, params in grid_of(summary)][:3] == [
        {"lora_rank": "4", "learning_rate": "1e-5", "batch_size": "16"},
        {"lora_rank": "4", "learning_rate": "0.0001", "batch_size": "32"},
        {"lora_rank": "8", "learning_rate": "1e-5", "batch_size": "16"},
    ]


def test_no_controls_and_no_tasks_plans_training_only(design):
    summary = design(tasks=[], controls=False, grid=["LoRA Rank=4,8"])
    experiment = read_summary(summary)
    assert [run.type for run in experiment.runs] == ["fine-tuned", "fine-tuned"]
    assert experiment.tasks == []
    jobs = planned_jobs(snakemake(summary, "-n").stdout)
    assert jobs == {"scaffold_finetune": 2, "finetune": 2, "all": 1}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"grid": ["Warmup=1,2"]}, "unknown factor 'Warmup'"),
        ({"grid": ["LoRA Rank=4,eight"]}, "lora rank 'eight' is not a whole number"),
        ({"grid": ["Learning Rate=1e-4,-1e-5"]}, "learning rate must be a positive number"),
        ({"grid": ["LoRA Rank=4,8,04"]}, "level '04' repeats '4'"),
        ({"grid": ["LoRA Rank=4,8", "rank=16"]}, "factor 'LoRA Rank' is already given"),
        ({"grid": ["LoRA Rank 4,8"]}, "expected 'Factor=value1,value2'"),
        ({"grid": ["System Prompt=a|b"]}, "contains '|'"),
        ({"grid": ["System Prompt=line\nbreak"]}, "contains '\\n'"),
        ({"grid": ["Batch Size=-"]}, "means 'not applicable'"),
        ({"grid": ["LoRA Rank=4,,8"]}, "empty value"),
        ({"grid": ["Model=Llama-3.2-3B-Instruct"]}, "is not one of the models"),
        ({"grid": [], "paired": ["LoRA Rank=4,8", "Learning Rate=1e-5"]}, "LoRA Rank has 2, Learning Rate has 1"),
        ({"tasks": ["../up=snaketune"]}, "must be one path component"),
        ({"models": ["Mystery-7B=/nowhere/m"]}, "unknown model 'Mystery-7B'"),
        ({"dataset": "/data/`words`.json"}, "contains '`'"),
        ({"epochs": None}, "a new design needs --epochs"),
        ({"epochs": 0}, "--epochs must be positive"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(design, tmp_path, overrides, message):
    with pytest.raises(DesignError) as raised:
        design(**overrides)
    assert message in str(raised.value)
    assert not (tmp_path / "exp").exists()


def test_an_existing_summary_is_not_replaced_without_force(design):
    summary = design()
    before = summary.read_bytes()
    with pytest.raises(DesignError, match="use --extend"):
        design(grid=["LoRA Rank=32"])
    assert summary.read_bytes() == before
    design(grid=["LoRA Rank=32"], force=True)
    assert [params for _t, _m, params in grid_of(summary)] == [{"lora_rank": "32"}, {}]


# ---- --extend -----------------------------------------------------------------------------


def assert_only_inserted(original: bytes, extended: bytes, inserted: list[str]) -> None:
    """Every original line is still there, in order, and removing the inserted lines gives
    back the original bytes exactly."""
    lines = extended.decode().splitlines(keepends=True)
    remaining = list(inserted)
    kept = []
    for line in lines:
        if remaining and line.rstrip("\r\n") == remaining[0]:
            remaining.pop(0)
        else:
            kept.append(line)
    assert remaining == []
    assert "".join(kept).encode() == original


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_extend_keeps_every_existing_byte(tmp_path, config, newline):
    summary = tmp_path / "experiment_summary.md"
    original = DATA.joinpath("new_generation.md").read_text().replace("\n", newline).encode()
    summary.write_bytes(original)
    outcome = extend_summary(summary, grid=["Learning Rate=1e-4,3e-4,1e-3", "LoRA Rank=4,32"], config=config)
    extended = summary.read_bytes()
    assert outcome.inserted == [
        "| rank4_lr1e-3 | Qwen2.5-0.5B-Instruct | 4 | 1e-3 | Fine-tuned | - |",
        "| rank32_lr1e-3 | Qwen2.5-0.5B-Instruct | 32 | 1e-3 | Fine-tuned | - |",
    ]
    assert_only_inserted(original, extended, outcome.inserted)
    assert (newline + outcome.inserted[0] + newline).encode() in extended
    runs = read_summary(summary).runs
    assert len(runs) == 7 and runs[-1].params == {"lora_rank": "32", "learning_rate": "1e-3"}
    assert outcome.messages[-1] == "7 planned: 0 already complete, 5 in the summary but not complete, 2 new"


def test_extend_a_table_that_ends_the_file_without_a_newline(tmp_path, config):
    summary = tmp_path / "experiment_summary.md"
    original = (
        "\ufeff# Experiment: bare\n\n## Resources\n### Models\n- **Llama-3.2-1B-Instruct**: `/m`\n### Dataset\n- **Path:** `/d.json`\n\n"
        "## All Runs\n| Run Name | Model | LoRA Rank | Type |\n|---|---|---|---|\n| r4 | Llama-3.2-1B-Instruct | 4 | Fine-tuned |"
    ).encode()
    summary.write_bytes(original)
    copy = tmp_path / "copy" / "experiment_summary.md"
    outcome = extend_summary(summary, grid=["LoRA Rank=4,8"], out=copy, config=config)
    assert summary.read_bytes() == original
    assert copy.read_bytes() == original + b"\n| rank8 | Llama-3.2-1B-Instruct | 8 | Fine-tuned |"
    assert outcome.messages[-1] == "2 planned: 0 already complete, 1 in the summary but not complete, 1 new"


def test_extend_adds_evaluation_matrix_rows_and_keeps_notes_and_status(tmp_path, config):
    summary = tmp_path / "experiment_summary.md"
    shutil.copy(DATA / "old_generation.md", summary)
    original = summary.read_bytes()
    outcome = extend_summary(summary, grid=["LoRA Rank=8,16", "Learning Rate=1e-5,5e-5"], config=config)
    # the Batch Size column is not in the grid: the new row gets the value every run shares
    assert outcome.inserted == [
        "| rank16_lr5e-5 | Llama-3.2-1B-Instruct | 16 | 5e-5 | 4 | Fine-tuned | - |",
        "| rank16_lr5e-5 | ✓ |",
    ]
    assert_only_inserted(original, summary.read_bytes(), outcome.inserted)
    experiment = read_summary(summary)
    assert ("rank16_lr5e-5", "capitalization") in experiment.eval_matrix
    assert "added 1 row(s) to the Evaluation Matrix" in outcome.messages


def test_extend_matches_by_value_not_by_column_order_or_spelling(tmp_path, config):
    summary = tmp_path / "experiment_summary.md"
    text = DATA.joinpath("new_generation.md").read_text()
    # reordered columns, an extra parameter column and a notes column, values spelled differently
    text = text.replace(
        "| Run Name | Model | LoRA Rank | Learning Rate | Type | Est. Time |\n|----------|-------|-----------|---------------|------|-----------|",
        "| Learning Rate | Run Name | Seed | Model | Type | LoRA Rank | Notes |\n|---|---|---|---|---|---|---|",
    )
    for rank, lr, time in (("4", "1e-4", "6"), ("4", "3e-4", "6"), ("32", "1e-4", "7"), ("32", "3e-4", "7")):
        name = f"Qwen2.5-0.5B_rank{rank}_lr{lr}"
        text = text.replace(
            f"| {name} | Qwen2.5-0.5B-Instruct | {rank} | {lr} | Fine-tuned | ~{time}min |",
            f"| {float(lr):.4f} | {name} | 7 | Qwen2.5-0.5B-Instruct | Fine-tuned | {rank} | tuned by hand |",
        )
    text = text.replace(
        "| Qwen2.5-0.5B_base | Qwen2.5-0.5B-Instruct | - | - | Control | N/A |",
        "| - | Qwen2.5-0.5B_base | - | Qwen2.5-0.5B-Instruct | Control | - | |",
    )
    summary.write_text(text)
    assert len(read_summary(summary).runs) == 5
    original = summary.read_bytes()

    nothing = extend_summary(summary, grid=["LoRA Rank=32,4", "Learning Rate=3e-4,1e-4", "Batch Size=8"], config=config)
    assert nothing.text is None and "nothing new" in nothing.messages[0]
    assert summary.read_bytes() == original

    outcome = extend_summary(summary, grid=["LoRA Rank=32,4,64", "Learning Rate=0.0003,0.0001"], config=config)
    assert outcome.inserted == [
        "| 0.0003 | lr0.0003_rank64 | 7 | Qwen2.5-0.5B-Instruct | Fine-tuned | 64 |  |",
        "| 0.0001 | lr0.0001_rank64 | 7 | Qwen2.5-0.5B-Instruct | Fine-tuned | 64 |  |",
    ]
    assert_only_inserted(original, summary.read_bytes(), outcome.inserted)


def test_extend_refuses_a_factor_the_table_has_no_column_for(tmp_path, config):
    summary = tmp_path / "experiment_summary.md"
    shutil.copy(DATA / "new_generation.md", summary)
    original = summary.read_bytes()
    # Batch size 8 is the summary's common value: every existing run already has it
    assert extend_summary(summary, grid=["Batch Size=8", "LoRA Rank=4,32"], config=config).text is None
    with pytest.raises(DesignError, match="has no 'Batch Size' column"):
        extend_summary(summary, grid=["Batch Size=8,16", "LoRA Rank=4,32"], config=config)
    with pytest.raises(DesignError, match="'Llama-3.2-1B-Instruct' is not under '### Models'"):
        extend_summary(summary, grid=["LoRA Rank=8"], models=[LLAMA], config=config)
    with pytest.raises(DesignError, match="lora rank 'big' is not a whole number"):
        extend_summary(summary, grid=["LoRA Rank=big"], config=config)
    assert summary.read_bytes() == original


def test_after_extend_the_dry_run_plans_only_the_new_runs(design, config):
    summary = design(grid=["LoRA Rank=4,8", "Learning Rate=1e-4"])
    snakemake(summary, "scaffold", "--cores", "1")
    # make every run complete the way the DAG sees it: its manifest and evaluation logs exist,
    # with the records of the settings they were made with (snaketune.state)
    for run in load_plan(summary, config).runs:
        logs = summary.parent / run.run_dir / "eval" / "logs"
        logs.mkdir(parents=True)
        trained = training_digest(run.setup) if run.fine_tuned else None
        if run.fine_tuned:
            write_record(summary.parent / run.run_dir / "finetune_manifest.json", {"training_digest": trained})
        for evaluation in run.evaluations:
            log = logs / f"{evaluation.task}_{evaluation.checkpoint}.eval"
            log.write_text("")
            record = {"status": "success", "evaluation_digest": evaluation_digest(run.setup, evaluation.task), "training_digest": trained}
            write_record(sidecar_path(log), record)
        write_record(logs.parent / "evaluations.json", {"pairs": []})  # the evaluation job's output
    assert planned_jobs(snakemake(summary, "-n").stdout) == {"report": 1, "all": 1}

    outcome = extend_summary(summary, grid=["LoRA Rank=4,8,16", "Learning Rate=1e-4,1e-3"], config=config)
    assert outcome.messages[-1] == "7 planned: 3 already complete, 4 new"
    jobs = planned_jobs(snakemake(summary, "-n").stdout)
    assert jobs == {"scaffold_finetune": 4, "finetune": 4, "evaluate": 4, "report": 1, "all": 1}


def test_command_line(tmp_path, capsys):
    summary = tmp_path / "experiment_summary.md"
    common = ["design", "--model", LLAMA, "--dataset", "words.json", "--task", "wordcase=snaketune", "--epochs", "1"]
    assert cli.main([*common, "--out", str(summary), "--name", "cli", "--grid", "LoRA Rank=4,8", "--no-controls"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert len(read_summary(summary).runs) == 2

    assert cli.main(["design", "--extend", str(summary), "--grid", "rank=8,16"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "3 planned: 0 already complete, 2 in the summary but not complete, 1 new"
    assert [run.params for run in read_summary(summary).runs] == [{"lora_rank": "4"}, {"lora_rank": "8"}, {"lora_rank": "16"}]

    assert cli.main(["design", "--extend", str(summary), "--grid", "LoRA Rank=4", "--epochs", "3"]) == 2
    assert "--epochs only apply to a new design" in capsys.readouterr().err
    assert cli.main(["design", "--out", str(tmp_path / "x.md"), "--name", "x", "--grid", "LoRA Rank=4"]) == 2
    assert "a new design needs --model, --dataset, --epochs" in capsys.readouterr().err


def test_module_entry_point_writes_nothing_on_error(tmp_path):
    out = tmp_path / "experiment_summary.md"
    command = [sys.executable, "-m", "snaketune", "design", "--out", str(out), "--name", "x", "--model", LLAMA]
    command += ["--dataset", "d.json", "--epochs", "1", "--grid", "LoRA Rank=4|8"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=dict(os.environ))
    assert result.returncode == 2
    assert "snaketune design: --grid 'LoRA Rank=4|8': LoRA Rank: '4|8' contains '|'" in result.stderr
    assert not out.exists()
