"""Run directory names: varying parameters only, stable once recorded."""

from __future__ import annotations

import pytest
from conftest import DATA

from snaketune.naming import load_registry, record_run, run_directories, run_key, short_model_name
from snaketune.parse import SummaryError, read_summary

HEAD = """# names

## All Runs
| Run Name | Model | LoRA Rank | Learning Rate | Batch Size | Type |
|---|---|---|---|---|---|
"""
MODELS = """
## Resources
### Models
- **Llama-3.2-1B-Instruct**: `/m/1b`
- **Llama-3.2-3B-Instruct**: `/m/3b`
"""


def summary(summary_file, rows: str):
    return read_summary(summary_file(HEAD + rows + MODELS))


def test_rank_and_lr_vary(summary_file):
    experiment = summary(
        summary_file,
        "| a | Llama-3.2-1B-Instruct | 8 | 1e-5 | 4 | Fine-tuned |\n"
        "| b | Llama-3.2-1B-Instruct | 8 | 5e-5 | 4 | Fine-tuned |\n"
        "| c | Llama-3.2-1B-Instruct | 16 | 1e-5 | 4 | Fine-tuned |\n"
        "| base | Llama-3.2-1B-Instruct | - | - | - | Control |\n",
    )
    assert run_directories(experiment, {}) == {"a": "rank8_lr1e-5", "b": "rank8_lr5e-5", "c": "rank16_lr1e-5", "base": "Llama-3.2-1B_base"}


def test_only_rank_varies(summary_file):
    experiment = summary(
        summary_file,
        "| a | Llama-3.2-1B-Instruct | 8 | 1e-5 | 4 | Fine-tuned |\n| b | Llama-3.2-1B-Instruct | 16 | 1e-5 | 4 | Fine-tuned |\n",
    )
    assert list(run_directories(experiment, {}).values()) == ["rank8", "rank16"]


def test_model_and_rank_vary(summary_file):
    experiment = summary(
        summary_file,
        "| a | Llama-3.2-1B-Instruct | 8 | 1e-5 | 4 | Fine-tuned |\n| b | Llama-3.2-3B-Instruct | 16 | 1e-5 | 4 | Fine-tuned |\n",
    )
    assert list(run_directories(experiment, {}).values()) == ["Llama-3.2-1B_rank8", "Llama-3.2-3B_rank16"]


def test_old_generation_names():
    experiment = read_summary(DATA / "old_generation.md")
    assert list(run_directories(experiment, {}).values()) == ["rank8_lr1e-5", "rank8_lr5e-5", "rank16_lr1e-5", "Llama-3.2-1B_base"]


def test_identical_parameters_are_rejected(summary_file):
    experiment = summary(
        summary_file,
        "| a | Llama-3.2-1B-Instruct | 8 | 1e-5 | 4 | Fine-tuned |\n| b | Llama-3.2-1B-Instruct | 8 | 1e-5 | 4 | Fine-tuned |\n",
    )
    with pytest.raises(SummaryError, match=r"line 7: run 'b' repeats the parameters of run 'a' \(line 6\)"):
        run_directories(experiment, {})


def test_names_are_stable_when_a_new_column_starts_to_vary(summary_file, tmp_path):
    rows = "| a | Llama-3.2-1B-Instruct | 8 | 1e-5 | 4 | Fine-tuned |\n| b | Llama-3.2-1B-Instruct | 16 | 1e-5 | 4 | Fine-tuned |\n"
    first = summary(summary_file, rows)
    names = run_directories(first, {})
    for run in first.runs:
        record_run(tmp_path, run_key(run), run.name, names[run.name])
    grown = summary(summary_file, rows + "| c | Llama-3.2-1B-Instruct | 8 | 1e-5 | 8 | Fine-tuned |\n")
    regrown = run_directories(grown, load_registry(tmp_path))
    assert regrown == {"a": "rank8", "b": "rank16", "c": "rank8_bs8"}


def test_collision_with_a_recorded_name_gets_a_suffix(summary_file, tmp_path):
    first = summary(
        summary_file,
        "| a | Llama-3.2-1B-Instruct | 8 | 1e-5 | 4 | Fine-tuned |\n| b | Llama-3.2-1B-Instruct | 16 | 1e-5 | 4 | Fine-tuned |\n",
    )
    for run, name in zip(first.runs, ["rank8", "rank16"], strict=True):
        record_run(tmp_path, run_key(run), run.name, name)
    # a different run whose proposed name is already recorded for another key
    later = summary(
        summary_file,
        "| x | Llama-3.2-1B-Instruct | 8 | 1e-5 | 8 | Fine-tuned |\n| y | Llama-3.2-1B-Instruct | 16 | 1e-5 | 8 | Fine-tuned |\n",
    )
    assert run_directories(later, load_registry(tmp_path)) == {"x": "rank8-2", "y": "rank16-2"}


def test_record_refuses_to_rebind_a_name(summary_file, tmp_path):
    experiment = summary(
        summary_file,
        "| a | Llama-3.2-1B-Instruct | 8 | 1e-5 | 4 | Fine-tuned |\n| b | Llama-3.2-1B-Instruct | 16 | 1e-5 | 4 | Fine-tuned |\n",
    )
    first, second = experiment.runs
    record_run(tmp_path, run_key(first), first.name, "rank8")
    with pytest.raises(RuntimeError, match="already records another run"):
        record_run(tmp_path, run_key(second), second.name, "rank8")


@pytest.mark.parametrize(
    ("model", "short"),
    [("Llama-3.2-1B-Instruct", "Llama-3.2-1B"), ("Qwen2.5-0.5B-instruct", "Qwen2.5-0.5B"), ("/m/Llama-3.2-3B", "Llama-3.2-3B")],
)
def test_short_model_name(model, short):
    assert short_model_name(model) == short
