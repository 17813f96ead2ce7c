"""The report: results.csv from real inspect-ai logs, summary.md, the plots, loss curves, W&B rendering.

The experiment is planned from a real summary (2 x 2 grid of LoRA rank and learning rate, a
control, 2 epochs, every epoch evaluated). Evaluation logs are written with inspect-ai's own
API from one real evaluation (mockllm model, the demo task's scorer), with each run's score set;
training logs are written by torchtune's own DiskLogger.
"""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import DATA
from e2e_helpers import row, write_summary

from snaketune import cli
from snaketune.parse import read_summary
from snaketune.plan import plan_experiment
from snaketune.render import dump_yaml, finetune_config, write_atomic
from snaketune.results import collect_results, read_training_log
from snaketune.scaffold import eval_log_name

ROWS = [
    row("r4_slow", 4, "1e-4"),
    row("r4_fast", 4, "1e-3"),
    row("r16_slow", 16, "1e-4"),
    row("r16_fast", 16, "1e-3"),
    row("base", "-", "-", "Control"),
]
# accuracy at the last epoch (epoch 1); epoch 0 scores half of it
FINAL_ACCURACY = {"rank4_lr1e-4": 0.1, "rank4_lr1e-3": 0.6, "rank16_lr1e-4": 0.2, "rank16_lr1e-3": 0.9}
CONTROL_ACCURACY = 0.05
NOT_EVALUATED = ("rank4_lr1e-4", "epoch_0")  # planned, no log: the summary must say so
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def real_eval_log(log_dir: Path, scorers: list) -> object:
    """One real inspect-ai evaluation of 4 samples (3 answered right) by the mockllm model."""
    from inspect_ai import Task
    from inspect_ai import eval as inspect_eval
    from inspect_ai.dataset import MemoryDataset, Sample
    from inspect_ai.model import ModelOutput, ModelUsage, get_model
    from inspect_ai.solver import generate

    answers = ["Apple", "Pear", "Plum", "fig"]
    outputs = []
    for answer in answers:
        output = ModelOutput.from_content(model="mockllm/model", content=answer)
        output.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)  # else mockllm counts tokens online
        outputs.append(output)
    samples = [Sample(input=word.lower(), target=word.capitalize()) for word in answers]
    task = Task(dataset=MemoryDataset(samples, name="words"), solver=[generate()], scorer=scorers)
    [log] = inspect_eval(task, model=get_model("mockllm/model", custom_outputs=outputs), log_dir=str(log_dir), display="none")
    assert log.status == "success"
    return log


def write_scored_log(template, out: Path, accuracy: float, model_path: str) -> None:
    """The template log with this evaluation's accuracy and model, written by inspect-ai."""
    from inspect_ai.log import write_eval_log

    log = copy.deepcopy(template)
    log.results.scores[0].metrics["accuracy"].value = accuracy
    log.results.scores[0].metrics["stderr"].value = accuracy / 10
    log.eval.model_args = {"model_path": model_path}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_eval_log(log, str(out))


def write_training_log(log_dir: Path, losses: dict[int, float], started: int, val_losses: dict[int, float] | None = None) -> None:
    """Records as snaketune's recipe writes them: a validation step's val_loss last in its record."""
    from torchtune.training.metric_logging import DiskLogger

    logger = DiskLogger(log_dir=str(log_dir), filename=f"log_{started}.txt")
    for step, loss in losses.items():
        record = {"loss": loss, "lr": 1e-3, "tokens_per_second_per_gpu": 100.0}
        if step in (val_losses or {}):
            record["val_loss"] = val_losses[step]
        logger.log_dict(record, step=step)
    logger.close()


# per run and epoch: (token-weighted training loss, validation loss); rank16_lr1e-3 is best at
# epoch 0 (its validation loss rises), rank4_lr1e-4 trained without validation
EPOCH_LOSSES = {
    "rank4_lr1e-4": [(0.5, None), (0.25, None)],
    "rank4_lr1e-3": [(0.4, 0.6), (0.2, 0.5)],
    "rank16_lr1e-4": [(0.45, 0.7), (0.3, 0.55)],
    "rank16_lr1e-3": [(0.3, 0.4), (0.1, 0.45)],
}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, config) -> Path:
    """Run directories as the workflow leaves them: setup files, eval logs, manifests, torchtune logs."""
    from snaketune.tasks.exact_match import SCORERS

    directory = tmp_path_factory.mktemp("report")
    summary = write_summary(directory, directory / "assets", ROWS, epochs=2, plan="Evaluate all epochs.", name="grid")
    plan = plan_experiment(read_summary(summary), config, {})
    template = real_eval_log(directory / "inspect", [SCORERS["match"]()])
    for run in plan.runs:
        run_dir = directory / run.run_dir
        write_atomic(run_dir / "setup_finetune.yaml", dump_yaml(run.setup))
        for evaluation in run.evaluations:
            if (run.run_dir, evaluation.checkpoint) == NOT_EVALUATED:
                continue
            if run.fine_tuned:
                accuracy = FINAL_ACCURACY[run.run_dir] * (1 if evaluation.checkpoint == "epoch_1" else 0.5)
                model_path = f"{run.setup['training']['output_dir']}/{evaluation.checkpoint}"
            else:
                accuracy, model_path = CONTROL_ACCURACY, run.setup["model_path"]
            write_scored_log(
                template, run_dir / "eval" / "logs" / eval_log_name(evaluation.task, evaluation.checkpoint), accuracy, model_path
            )
        if run.fine_tuned:
            losses = {f"epoch_{e}": {"train_loss": t, "val_loss": v} for e, (t, v) in enumerate(EPOCH_LOSSES[run.run_dir])}
            (run_dir / "finetune_manifest.json").write_text(json.dumps({"losses": losses}))
            logs = Path(run.setup["training"]["output_dir"]) / "logs"
            validated = {2 * (e + 1): v for e, (_, v) in enumerate(EPOCH_LOSSES[run.run_dir]) if v is not None}
            write_training_log(logs, {step: 1.0 / step for step in range(1, 5)}, started=1000, val_losses=validated)
    return directory


@pytest.fixture(scope="module")
def reported(experiment) -> Path:
    """`snaketune report <experiment>` as a researcher runs it while some evaluation is missing."""
    assert cli.main(["report", str(experiment)]) == 0
    return experiment / "results"


def test_results_table_has_every_evaluation_with_its_parameters_and_scores(reported, experiment):
    table = pd.read_csv(reported / "results.csv")
    assert len(table) == 4 * 2 + 1 - 1  # every epoch of every run, the control, less the missing one
    assert list(table.columns[:6]) == ["run", "run_name", "type", "task", "epoch", "checkpoint"]
    assert {"model", "lora_rank", "learning_rate", "accuracy", "stderr", "samples", "model_path", "log", "status"} <= set(table.columns)
    final = table[table["epoch"] == 1].set_index("run")
    for run, accuracy in FINAL_ACCURACY.items():
        assert final.loc[run, "accuracy"] == pytest.approx(accuracy)
        assert final.loc[run, "stderr"] == pytest.approx(accuracy / 10)
        assert final.loc[run, "model_path"] == str(experiment / "ck-outputs" / f"ck-out-{run}" / "epoch_1")
    assert final.loc["rank16_lr1e-3", "run_name"] == "r16_fast"
    assert final.loc["rank16_lr1e-3", "learning_rate"] == pytest.approx(1e-3)
    control = table[table["type"] == "control"].iloc[0]
    assert control["run"] == "tiny-llama_base" and control["checkpoint"] == "base" and pd.isna(control["epoch"])
    assert control["accuracy"] == pytest.approx(CONTROL_ACCURACY)
    assert (table["samples"] == 4).all() and (table["status"] == "success").all() and (table["task"] == "wordcase").all()
    # each evaluated epoch's token-weighted training and validation loss, from the run's manifest
    for run, epochs in EPOCH_LOSSES.items():
        for epoch, (train_loss, val_loss) in enumerate(epochs):
            found = table[(table["run"] == run) & (table["epoch"] == epoch)]
            if (run, f"epoch_{epoch}") == NOT_EVALUATED:
                assert found.empty
                continue
            assert found["train_loss"].item() == pytest.approx(train_loss)
            assert pd.isna(found["val_loss"].item()) if val_loss is None else found["val_loss"].item() == pytest.approx(val_loss)
    assert pd.isna(control["train_loss"]) and pd.isna(control["val_loss"])
    # whole-number parameters stay whole next to the control's empty cell
    assert "\n" + "rank4_lr1e-3,r4_fast,fine-tuned,wordcase,1,epoch_1,tiny-llama,4,0.001," in (reported / "results.csv").read_text()


def test_every_metric_of_every_scorer_lands_in_the_table(tmp_path, config):
    from inspect_ai.scorer import includes

    from snaketune.tasks.exact_match import SCORERS

    summary = write_summary(tmp_path, tmp_path / "assets", [row("one", 4, "1e-4")], name="metrics")
    [run] = plan_experiment(read_summary(summary), config, {}).runs
    write_atomic(tmp_path / run.run_dir / "setup_finetune.yaml", dump_yaml(run.setup))
    log = real_eval_log(tmp_path / "inspect", [SCORERS["match"](), includes(ignore_case=False)])
    from inspect_ai.log import write_eval_log

    path = tmp_path / run.run_dir / "eval" / "logs" / "wordcase_epoch_0.eval"
    path.parent.mkdir(parents=True)
    write_eval_log(log, str(path))
    results = collect_results([path])
    assert results.metrics == ["accuracy", "stderr", "includes_accuracy", "includes_stderr"]
    first = results.table.iloc[0]
    assert first["accuracy"] == pytest.approx(0.75)  # "fig" is not "Fig"
    assert first["stderr"] == pytest.approx(0.25)
    assert first["includes_accuracy"] == pytest.approx(0.75)
    assert first["scorer"] == "match,includes"
    assert first["samples"] == 4


def test_summary_names_best_run_control_factor_effects_and_missing_evaluation(reported, experiment):
    summary = (reported / "summary.md").read_text()
    sections = {part.split("\n", 1)[0]: part for part in summary.split("\n## ")}
    assert "8 of 9 planned evaluations have a log (4 fine-tuned runs, 1 control, 1 task)" in summary
    assert (
        "| wordcase | rank16_lr1e-3 | r16_fast | 1 | 0.900 ± 0.090 | +0.850 | lora_rank=16, learning_rate=0.001 |"
        in sections["Best run per task"]
    )
    assert "| wordcase | tiny-llama_base | base | tiny-llama | 0.050 ± 0.005 |" in sections["Control"]
    effects = sections["Effect of each factor"]
    assert "| 4 | 0.350 (0.100–0.600, n=2) |" in effects and "| 16 | 0.550 (0.200–0.900, n=2) |" in effects
    assert "| 0.0001 | 0.150 (0.100–0.200, n=2) |" in effects and "| 0.001 | 0.750 (0.600–0.900, n=2) |" in effects
    missing = experiment / "rank4_lr1e-4" / "eval" / "logs" / "wordcase_epoch_0.eval"
    assert sections["Missing or failed"].count("\n- ") == 1 and f"`{missing}`: planned, no log" in sections["Missing or failed"]
    assert "| rank16_lr1e-3 | 4 | 1 | 0.25 |" in sections["Training"]
    assert "![training_loss](plots/training_loss.png)" in sections["Plots"]
    assert "![validation_loss](plots/validation_loss.png)" in sections["Plots"]
    # the best epoch by validation loss; a run without validation is not listed
    validation = sections["Validation"]
    assert "| rank16_lr1e-3 | 2 | 0 | 0.4 | 0.3 | 1 | 0.45 | no |" in validation
    assert "| rank4_lr1e-3 | 2 | 1 | 0.5 | 0.2 | 1 | 0.5 | no |" in validation
    assert "rank4_lr1e-4" not in validation


def test_summary_flags_a_validation_loss_rising_two_epochs_in_a_row():
    from snaketune.results import validation_rows

    def losses(*values):
        return {f"epoch_{e}": {"train_loss": 1.0 / (e + 1), "val_loss": v} for e, v in enumerate(values)}

    rows = {row[0]: row for row in validation_rows({"rises": losses(0.9, 0.5, 0.6, 0.7), "once": losses(0.9, 0.5, 0.6, 0.55)})}
    assert rows["rises"][2] == 1 and rows["rises"][7] == "overfitting: validation loss rose 2 epochs in a row (epoch 1 0.5 -> epoch 3 0.7)"
    assert rows["once"][2] == 1 and rows["once"][7] == "no"  # one rise is noise, not a trend


def test_plots_are_png_figures(reported):
    plots = sorted(path.name for path in (reported / "plots").iterdir())
    assert plots == [
        "training_loss.png",
        "validation_loss.png",
        "wordcase_accuracy_by_epoch.png",
        "wordcase_accuracy_by_learning_rate.png",
        "wordcase_accuracy_by_lora_rank.png",
    ]
    for name in plots:
        data = (reported / "plots" / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000, name


def test_resumed_training_log_keeps_each_steps_latest_value(tmp_path):
    write_training_log(tmp_path, {1: 2.0, 2: 1.5, 3: 1.2}, started=1700000000)
    write_training_log(tmp_path, {3: 1.1, 4: 0.9}, started=1700000100)  # the resumed epoch redoes step 3
    log = read_training_log(tmp_path)
    assert log["step"].tolist() == [1, 2, 3, 4]
    assert log["loss"].tolist() == [2.0, 1.5, 1.1, 0.9]
    assert set(log.columns) == {"step", "loss", "lr", "tokens_per_second_per_gpu"}


def test_a_record_with_a_validation_loss_reads_like_any_other(tmp_path):
    write_training_log(tmp_path, {1: 2.0, 2: 1.5, 3: 1.2}, started=1700000000, val_losses={2: 1.7})
    log = read_training_log(tmp_path)
    assert log["loss"].tolist() == [2.0, 1.5, 1.2]  # no NaN training loss at the validated step
    assert log["val_loss"].iloc[1] == 1.7 and log["val_loss"].isna().sum() == 2


def wandb_logger_config(config: dict, **wandb) -> dict:
    config = copy.deepcopy(config)
    config["wandb"].update(wandb)
    run = plan_experiment(read_summary(DATA / "new_generation.md"), config, {}).runs[0]
    return finetune_config(run.setup)["metric_logger"], run


def test_wandb_is_off_by_default(config):
    logger, run = wandb_logger_config(config)
    assert logger == {
        "_component_": "torchtune.training.metric_logging.DiskLogger",
        "log_dir": f"{run.setup['training']['output_dir']}/logs",
    }


def test_wandb_logs_offline_with_the_experiment_as_group_and_the_run_as_name(config):
    logger, run = wandb_logger_config(config, project="lora-sweeps", entity="my-lab")
    output_dir = run.setup["training"]["output_dir"]
    assert logger == {
        "_component_": "snaketune.metric_logging.DiskAndWandBLogger",
        "log_dir": f"{output_dir}/logs",  # the disk log stays: the report's loss curves read it
        "wandb": {
            "project": "lora-sweeps",
            "group": run.setup["experiment"],
            "name": run.run_dir,
            "mode": "offline",
            "dir": output_dir,
            "entity": "my-lab",
        },
    }
    assert "entity" not in wandb_logger_config(config, project="lora-sweeps")[0]["wandb"]


def test_wandb_logger_config_is_what_torchtune_instantiates(tmp_path, config):
    """torchtune resolves the component and passes the keywords; W&B itself needs `pip install wandb`."""
    from omegaconf import OmegaConf
    from torchtune import config as torchtune_config

    logger, _ = wandb_logger_config(config, project="lora-sweeps")
    logger.update(log_dir=str(tmp_path / "logs"), wandb={**logger["wandb"], "dir": str(tmp_path)})
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ImportError, match="wandb"):
            torchtune_config.instantiate(OmegaConf.create(logger))
        assert not (tmp_path / "logs").exists()  # nothing half-made
        return
    instance = torchtune_config.instantiate(OmegaConf.create(logger))
    instance.log_dict({"loss": 0.5}, step=1)
    instance.close()
    assert read_training_log(tmp_path / "logs")["loss"].tolist() == [0.5]
    assert list(tmp_path.glob("wandb/offline-run-*"))


def test_status_shows_the_last_validation_loss_its_trend_and_overfitting(tmp_path):
    from snaketune.state import EPOCH_LOSSES
    from snaketune.status import ExperimentStatus, RunStatus, _progress, table_rows

    output_dir = tmp_path / "ck-out-run"
    # three epochs of two steps, validated at each epoch's end: 0.5, 0.6, 0.7 (rising twice)
    write_training_log(output_dir / "logs", {step: 1.0 / step for step in range(1, 7)}, started=1000, val_losses={2: 0.5, 4: 0.6, 6: 0.7})
    epochs = {f"epoch_{e}": {"train_loss": 0.3, "val_loss": v} for e, v in enumerate([0.5, 0.6, 0.7])}
    write_atomic(output_dir / EPOCH_LOSSES, json.dumps(epochs))
    status = RunStatus("run", "run", "fine-tuned", state="completed", epochs=3)
    _progress(status, output_dir, "max_steps_per_epoch=2", finished=True)
    assert status.last_loss == pytest.approx(1 / 6) and status.last_val_loss == pytest.approx(0.7)
    assert status.val_loss_trend == "↑"
    assert "overfitting: validation loss rose 2 epochs in a row (epoch 0 0.5 -> epoch 2 0.7)" in status.flags
    assert not [flag for flag in status.flags if "NaN" in flag]  # records with val_loss have their loss
    cell = table_rows(ExperimentStatus("exp", "experiment_summary.md", [status], 0, False))[0]["loss"]
    assert cell == "0.167 ↓, val 0.7 ↑"
