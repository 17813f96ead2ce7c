"""experiment_summary.md parsing: both generations, liberal layout, strict meaning."""

from __future__ import annotations

import pytest
from conftest import DATA

from snaketune.parse import SummaryError, epochs_phrase, leading_value, parse_summary, read_summary

MINIMAL = """# Experiment: minimal

## All Runs
| Run Name | Model | LoRA Rank | Learning Rate | Type |
|---|---|---|---|---|
| a | M-1B | 8 | 1e-5 | Fine-tuned |
| b | M-1B | 16 | 1e-5 | Fine-tuned |

## Resources
### Models
- **M-1B**: `/models/M-1B`

### Dataset
- **Path:** `data.json`
"""


def test_new_generation_reads_every_section():
    experiment = read_summary(DATA / "new_generation.md")
    assert experiment.name == "wordcase_rank_lr_2026-11-20"
    assert [run.name for run in experiment.fine_tuned] == [
        "Qwen2.5-0.5B_rank4_lr1e-4",
        "Qwen2.5-0.5B_rank4_lr3e-4",
        "Qwen2.5-0.5B_rank32_lr1e-4",
        "Qwen2.5-0.5B_rank32_lr3e-4",
    ]
    assert [run.name for run in experiment.controls] == ["Qwen2.5-0.5B_base"]
    assert experiment.columns == ["lora_rank", "learning_rate"]
    assert experiment.runs[0].params == {"lora_rank": "4", "learning_rate": "1e-4"}
    assert experiment.controls[0].params == {}
    assert experiment.models == {"Qwen2.5-0.5B-Instruct": "/data/models/Qwen2.5-0.5B-Instruct"}
    assert experiment.dataset == "/data/tasks/wordcase/words_6L_500.json"
    assert [(t.name, t.script) for t in experiment.tasks] == [("wordcase", "/data/tasks/wordcase/inspect_task.py")]
    assert experiment.config["epochs"] == "2"
    assert experiment.config["batch_size"] == "8"
    assert experiment.config["system_prompt"] == ""
    assert experiment.config["temperature"] == "0.0"
    assert experiment.config["checkpoint_dir"] == "/scratch/me/ck-outputs"
    assert experiment.eval_sentence == "last"
    assert experiment.stated_directory == "/scratch/me/wordcase_rank_lr_2026-11-20"


def test_old_generation_reads_flat_configuration_models_used_and_matrix():
    experiment = read_summary(DATA / "old_generation.md")
    assert experiment.name == "cap_4L_lora_lr_sweep_2025-10-22"
    assert experiment.models == {"Llama-3.2-1B-Instruct": "/scratch/models/Llama-3.2-1B-Instruct"}
    assert experiment.columns == ["lora_rank", "learning_rate", "batch_size"]
    assert experiment.config["gpus"] == "1"
    assert experiment.config["batch_size"] == "4"
    assert "lora_alpha" not in experiment.config  # "Auto-set to 2 x rank" is the default rule
    assert experiment.config["system_prompt"] == ""
    assert experiment.config["validation"] == "Yes"
    first, second, third, control = (run.name for run in experiment.runs)
    assert experiment.eval_matrix == {
        (first, "capitalization"): "0,1",
        (second, "capitalization"): None,
        (control, "capitalization"): None,
    }
    assert (third, "capitalization") not in experiment.eval_matrix


def test_status_tables_are_not_runs():
    experiment = read_summary(DATA / "old_generation.md")
    assert len(experiment.runs) == 4


def test_column_order_case_extra_columns_and_decorations(summary_file):
    text = """# shuffled

## All Runs
| TYPE | learning rate | **Run Name** | model | lora rank | Notes | Dropout Schedule |
|:---|---:|:---:|---|---|---|---|
| fine-tuned | `1e-5` | r1 | M-1B | 8 | first | cosine |
| Fine-Tuned | 5e-5 | r2 | M-1B | 8 |  | linear |
| CONTROL | - | base | M-1B | - | | - |

## Resources
### Models
- **M-1B**: `/m`
"""
    experiment = parse_summary(text, summary_file(text))
    assert [run.type for run in experiment.runs] == ["fine-tuned", "fine-tuned", "control"]
    assert experiment.runs[0].params == {"learning_rate": "1e-5", "lora_rank": "8", "dropout_schedule": "cosine"}
    assert experiment.columns == ["learning_rate", "lora_rank", "dropout_schedule"]
    assert experiment.runs[2].params == {}


def test_crlf_and_bom(summary_file):
    text = "\ufeff" + MINIMAL.replace("\n", "\r\n")
    path = summary_file("")
    path.write_bytes(text.encode("utf-8"))
    experiment = read_summary(path)
    assert [run.name for run in experiment.runs] == ["a", "b"]
    assert experiment.dataset == "data.json"


def test_quoted_system_prompt_keeps_exact_text(summary_file):
    text = MINIMAL + '\n## Configuration\n- **System prompt:** "Capitalize: the word, exactly." (same in eval)\n'
    assert read_summary(summary_file(text)).config["system_prompt"] == "Capitalize: the word, exactly."


def test_row_values_keep_their_text(summary_file):
    experiment = read_summary(summary_file(MINIMAL))
    assert experiment.runs[0].params["learning_rate"] == "1e-5"


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("last epoch only", "last"),
        ("All runs at the final epoch", "last"),
        ("all epochs", "all"),
        ("evaluate every epoch", "all"),
        ("epoch 0", "0"),
        ("epochs 0, 1", "0,1"),
        ("epoch 0 and epoch 2", "0,2"),
        ("0,1", "0,1"),
        ("all", "all"),
        ("Best by validation loss", "best"),
        ("best epoch", "best"),
        ("BEST BY VAL LOSS", "best"),
        ("best and last", "best,last"),
        ("best epoch and epoch 0", "best,0"),
        ("the epoch with the lowest validation loss", "best"),
        ("nothing said", None),
    ],
)
def test_epoch_phrases(text, phrase):
    assert epochs_phrase(text) == phrase


@pytest.mark.parametrize(
    ("text", "value"),
    [('"" (consistent across train and eval)', ""), ("2 (one node)", "2"), ("`/x/y` here", "/x/y"), ("1e-5,", "1e-5")],
)
def test_leading_value(text, value):
    assert leading_value(text) == value


def test_epochs_to_evaluate_bullet_wins_over_matrix(summary_file):
    text = MINIMAL.replace("### Dataset", "### Evaluation Tasks\n| Task Name | Script |\n|---|---|\n| t | snaketune |\n\n### Dataset")
    text += "\n## Evaluation Plan\n- **Epochs to evaluate:** all epochs\n\n### Evaluation Matrix\n| Run Name | t |\n|---|---|\n| a | ✓ epoch 0 |\n"
    experiment = read_summary(summary_file(text))
    assert experiment.eval_epochs == "all"
    assert experiment.eval_matrix == {("a", "t"): "0"}


BAD = [
    ("no All Runs section", lambda t: t.replace("## All Runs", "## Runs"), 1, "no '## All Runs' section"),
    ("empty table", lambda t: t.split("| a |")[0], 4, "has no runs"),
    ("duplicate run name", lambda t: t.replace("| b |", "| a |"), 7, "duplicate run name 'a' (first on line 6)"),
    ("negative rank", lambda t: t.replace("| 16 |", "| -16 |"), 7, "lora rank '-16' is not a whole number"),
    ("zero rank", lambda t: t.replace("| 16 |", "| 0 |"), 7, "lora rank must be positive"),
    ("fractional rank", lambda t: t.replace("| 16 |", "| 1.5 |"), 7, "lora rank '1.5' is not a whole number"),
    ("lr fast", lambda t: t.replace("| 1e-5 | Fine-tuned |\n| b", "| fast | Fine-tuned |\n| b"), 6, "learning rate 'fast' is not a number"),
    ("lr zero", lambda t: t.replace("| 16 | 1e-5 |", "| 16 | 0 |"), 7, "learning rate must be a positive number"),
    ("lr nan", lambda t: t.replace("| 16 | 1e-5 |", "| 16 | nan |"), 7, "learning rate must be a positive number"),
    ("lr inf", lambda t: t.replace("| 16 | 1e-5 |", "| 16 | inf |"), 7, "learning rate must be a positive number"),
    ("unknown type", lambda t: t.replace("| 16 | 1e-5 | Fine-tuned |", "| 16 | 1e-5 | Pretrained |"), 7, "unknown Type 'Pretrained'"),
    ("model without path", lambda t: t.replace("| b | M-1B |", "| b | M-3B |"), 7, "model 'M-3B' of run 'b' has no path"),
    ("dotdot name", lambda t: t.replace("| b |", "| .. |"), 7, "unsafe run name '..'"),
    ("slash name", lambda t: t.replace("| b |", "| x/y |"), 7, "unsafe run name 'x/y'"),
    ("leading dash", lambda t: t.replace("| b |", "| -rf |"), 7, "unsafe run name '-rf'"),
    ("control char", lambda t: t.replace("| b |", "| b\x07 |"), 7, "unsafe run name"),
    ("backslash", lambda t: t.replace("| b |", "| a\\b |"), 7, "unsafe run name"),
    ("empty name", lambda t: t.replace("| b |", "|  |"), 7, "empty run name"),
    (
        "too many cells",
        lambda t: t.replace("| 16 | 1e-5 | Fine-tuned |", "| 16 | 1e-5 | Fine-tuned | extra |"),
        7,
        "the row has 6 cells but the header has 5",
    ),
    (
        "too few cells",
        lambda t: t.replace("| 16 | 1e-5 | Fine-tuned |", "| 16 | Fine-tuned |"),
        7,
        "the row has 4 cells but the header has 5",
    ),
    ("no model column", lambda t: t.replace("| Model |", "| Modell |"), 4, "no 'Model' column"),
    ("no type column", lambda t: t.replace("| Type |", "| Kind |"), 4, "no 'Type' column"),
    ("no run name column", lambda t: t.replace("| Run Name |", "| Label |"), 4, "no 'Run Name' column"),
    ("repeated column", lambda t: t.replace("| Learning Rate |", "| LoRA Rank |"), 4, "repeats column"),
    ("no table", lambda t: t.replace("| Run Name", "Run Name").replace("|---|", "---"), 4, "has no table"),
    ("no model", lambda t: t.replace("| b | M-1B |", "| b | - |"), 7, "run 'b' has no model"),
    ("bad batch size", lambda t: t + "\n## Configuration\n- **Batch size:** eight\n", 17, "batch size 'eight' is not a whole number"),
    ("bad epochs", lambda t: t + "\n## Configuration\n- **Epochs:** 0\n", 17, "epochs must be positive"),
    (
        "huge batch size",
        lambda t: t + "\n## Configuration\n- **Batch size:** 99999999999999999999\n",
        17,
        "batch size 99999999999999999999 is out of range (at most 9223372036854775807)",
    ),
    ("huge rank in a row", lambda t: t.replace("| 16 |", "| 9223372036854775808 |"), 7, "lora rank 9223372036854775808 is out of range"),
    (
        "unclosed system prompt",
        lambda t: t + '\n## Configuration\n- **System prompt:** "Answer with the word\n',
        17,
        "the System prompt's opening quote \" never closes on its line",
    ),
    (
        "unclosed system prompt cell",
        lambda t: (
            t.replace("| Type |", "| System Prompt | Type |")
            .replace("|---|---|---|---|---|", "|---|---|---|---|---|---|")
            .replace("| Fine-tuned |", '| "Answer | Fine-tuned |')
        ),
        6,
        "the System Prompt cell's opening quote \" never closes",
    ),
    (
        "unclosed curly system prompt",
        lambda t: t + "\n## Configuration\n- **System prompt:** “x\n",
        17,
        "the System prompt's opening quote “ never closes",
    ),
    ("bad gpus", lambda t: t + "\n## Configuration\n- **GPUs:** many\n", 17, "gpus 'many' is not a whole number"),
    ("bad epochs to evaluate", lambda t: t + "\n## Evaluation Plan\n- **Epochs to evaluate:** whenever\n", 17, "cannot read which epochs"),
    (
        "matrix names unknown run",
        lambda t: t + "\n## Evaluation Plan\n### Evaluation Matrix\n| Run Name | t |\n|---|---|\n| zz | ✓ |\n",
        20,
        "names run 'zz'",
    ),
    (
        "bad alpha",
        lambda t: (
            t.replace("| Type |", "| LoRA Alpha | Type |")
            .replace("|---|---|---|---|---|", "|---|---|---|---|---|---|")
            .replace("| Fine-tuned |", "| x | Fine-tuned |")
        ),
        6,
        "lora alpha 'x' is not a number",
    ),
]


@pytest.mark.parametrize(("label", "edit", "line", "message"), BAD, ids=[case[0] for case in BAD])
def test_bad_summaries_are_rejected_with_file_and_line(summary_file, label, edit, line, message):
    path = summary_file(edit(MINIMAL))
    with pytest.raises(SummaryError) as caught:
        read_summary(path)
    assert f"line {line}" in str(caught.value)
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(SummaryError, match="file not found"):
        read_summary(tmp_path / "nope.md")


def test_non_utf8_names_the_line(summary_file):
    path = summary_file("")
    path.write_bytes(MINIMAL.encode() + b"\n- \xff\xfe bad\n")
    with pytest.raises(SummaryError, match="line 16: the file is not valid UTF-8"):
        read_summary(path)


def test_best_by_validation_loss_in_matrix_cells_plans_the_best_checkpoint(config):
    from snaketune.plan import plan_experiment

    experiment = read_summary(DATA / "best_epoch.md")
    assert experiment.eval_matrix[("r8_hot", "wordcase")] == "best,last"
    assert experiment.eval_matrix[("r8_cold", "wordcase")] == "best"
    assert experiment.eval_sentence == "best"  # "at the epoch with the best validation loss"
    runs = {run.name: run for run in plan_experiment(experiment, config, {}).runs}
    assert [e.checkpoint for e in runs["r8_hot"].evaluations] == ["epoch_2", "best"]
    assert [e.checkpoint for e in runs["r8_cold"].evaluations] == ["best"]
    assert [e.checkpoint for e in runs["base"].evaluations] == ["base"]
