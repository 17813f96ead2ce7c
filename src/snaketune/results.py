"""An experiment's results: the table of every evaluation, training losses, and the summary.

Scores are read with inspect-ai's own log API (``read_eval_log``), never by unpacking files;
per-step training (and validation) losses come from the text logs of torchtune's ``DiskLogger``,
each epoch's token-weighted training and validation loss from the run's manifest. The figures
are :mod:`snaketune.plots`' (which imports this module, never the other way round) and
:mod:`snaketune.report` writes the whole report.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path

import pandas as pd
import yaml

from snaketune.scaffold import EVAL_LOG, eval_log_name
from snaketune.state import MANIFEST, SUCCESS, VALIDATION_RECORD, read_record, sidecar_path
from snaketune.validation import best_epoch, overfitting_note, run_losses, val_losses

FIRST_COLUMNS = ["run", "run_name", "type", "task", "epoch", "checkpoint"]
# the evaluated epoch's token-weighted training and validation loss (the run's manifest)
LOSS_COLUMNS = ["train_loss", "val_loss"]
LAST_COLUMNS = ["scorer", "samples", "status", "model_path", "log"]
# The score that ranks runs and is plotted; where no scorer reports it, the first metric with values.
PRIMARY_METRIC = "accuracy"
# torchtune's DiskLogger line: "Step 12 | loss:0.38 lr:0.001 tokens_per_second_per_gpu:436.7 "
TRAINING_LOG_LINE = re.compile(r"^Step (?P<step>\d+) \| (?P<values>.*)$")


def run_setup(run_dir: Path) -> dict:
    """The run's ``setup_finetune.yaml``, read once per version of the file (a run has many logs)."""
    path = run_dir.absolute() / "setup_finetune.yaml"
    return _read_setup(path, path.stat().st_mtime_ns)


@cache
def _read_setup(path: Path, mtime_ns: int) -> dict:
    return yaml.safe_load(path.read_text())


def run_manifest(run_dir: Path) -> dict:
    """The run's ``finetune_manifest.json`` ({} when there is none), its ``losses`` completed by
    the validate job's record; read once per version of the two files."""
    path, record = run_dir.absolute() / MANIFEST, run_dir.absolute() / VALIDATION_RECORD
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return {}
    return _read_manifest(path, stamp, record.stat().st_mtime_ns if record.exists() else 0)


@cache
def _read_manifest(path: Path, mtime_ns: int, record_mtime_ns: int) -> dict:
    manifest = read_record(path) or {}
    return {**manifest, "losses": run_losses(path.parent, manifest)}


def run_dir_of_log(log_path: Path) -> Path:
    """``<run_dir>/eval/logs/<task>_<checkpoint>.eval`` -> ``<run_dir>``."""
    return log_path.parent.parent.parent


@dataclass
class Results:
    """The evaluations as one wide table, and which of its columns are what."""

    table: pd.DataFrame
    parameters: list[str]  # the runs' parameter columns (model first, then the All Runs table's)
    metrics: list[str]  # every metric the scorers report: the first scorer's bare, others <scorer>_<metric>

    @property
    def primary_metric(self) -> str:
        if PRIMARY_METRIC in self.table and self.table[PRIMARY_METRIC].notna().any():
            return PRIMARY_METRIC
        with_values = [m for m in self.metrics if self.table[m].notna().any()]
        return with_values[0] if with_values else PRIMARY_METRIC

    @property
    def fine_tuned(self) -> pd.DataFrame:
        return self.table[self.table["type"] == "fine-tuned"]

    @property
    def controls(self) -> pd.DataFrame:
        return self.table[self.table["type"] == "control"]

    def varying_parameters(self) -> list[str]:
        """Parameters with more than one value across the evaluated fine-tuned runs (the factors)."""
        runs = self.fine_tuned.drop_duplicates("run")
        return [p for p in self.parameters if runs[p].dropna().astype(str).nunique() > 1]

    @property
    def by_epoch(self) -> pd.DataFrame:
        """The fine-tuned evaluations, one per (run, task, epoch): a ``best`` evaluation only
        where no ``epoch_N`` evaluation of its epoch exists (it is the same checkpoint)."""
        rows = self.fine_tuned.assign(_best=self.fine_tuned["checkpoint"] == "best").sort_values("_best", kind="stable")
        return rows.drop_duplicates(["run", "task", "epoch"]).drop(columns="_best").sort_index()

    def final_epochs(self) -> pd.DataFrame:
        """Each fine-tuned run's evaluation at the last epoch evaluated for each task."""
        fine_tuned = self.by_epoch.sort_values("epoch", kind="stable")
        return fine_tuned.groupby(["run", "task"], sort=False).tail(1).sort_index()


def evaluation_row(log_path: Path) -> tuple[dict, list[str], list[str]]:
    """One results row: the evaluation's identity, the run's parameters and its scores, with
    the row's parameter and metric column names.

    The log's place names it (``<run_dir>/eval/logs/<task>_<checkpoint>.eval``); the run's
    ``setup_finetune.yaml`` gives its name, type and parameter values.
    """
    from inspect_ai.log import read_eval_log

    name = EVAL_LOG.match(log_path.name)
    if name is None:
        raise ValueError(f"{log_path} is not named <task>_<checkpoint>.eval")
    setup = run_setup(run_dir_of_log(log_path))
    log = read_eval_log(str(log_path), header_only=True)
    checkpoint = name.group("checkpoint")
    row = {
        "run": setup["run_dir"],
        "run_name": setup["run_name"],
        "type": setup["type"],
        "task": name.group("task"),
        "epoch": int(checkpoint.removeprefix("epoch_")) if checkpoint.startswith("epoch_") else None,
        "checkpoint": checkpoint,
    }
    if checkpoint == "best":  # the epoch of lowest validation loss it resolved to (its sidecar)
        row["epoch"] = (read_record(sidecar_path(log_path)) or {}).get("epoch")
    parameters = []
    for parameter, value in setup["table"].items():
        # a parameter column named like one of ours ("task", "epoch") must not replace it
        column = parameter if parameter not in row else f"param_{parameter}"
        row[column] = value
        parameters.append(column)
    metrics = []
    scores = log.results.scores if log.results else []
    for score in scores:
        prefix = "" if score is scores[0] else f"{score.name}_"
        for metric in score.metrics.values():
            row[prefix + metric.name] = metric.value
            metrics.append(prefix + metric.name)
    evaluated = checkpoint if row["epoch"] is None else f"epoch_{row['epoch']}"
    epoch_losses = (run_manifest(run_dir_of_log(log_path)).get("losses") or {}).get(evaluated) or {}
    for column in LOSS_COLUMNS:
        row[column] = epoch_losses.get(column)
    row["scorer"] = ",".join(score.name for score in scores)
    row["samples"] = log.results.completed_samples if log.results else 0
    row["status"] = log.status
    row["model_path"] = log.eval.model_args.get("model_path", "")
    row["log"] = str(log_path)
    return row, parameters, metrics


def collect_results(logs: list[Path]) -> Results:
    rows, parameters, metrics = [], {}, {PRIMARY_METRIC: None}
    for path in logs:
        row, row_parameters, row_metrics = evaluation_row(path)
        rows.append(row)
        parameters.update(dict.fromkeys(row_parameters))
        metrics.update(dict.fromkeys(row_metrics))
    columns = [*FIRST_COLUMNS, *parameters, *metrics, *LOSS_COLUMNS, *LAST_COLUMNS]
    table = pd.DataFrame(rows, columns=columns)
    table["epoch"] = table["epoch"].astype("Int64")
    for column in LOSS_COLUMNS:
        table[column] = pd.to_numeric(table[column])
    for column in parameters:
        values = [row[column] for row in rows if row.get(column) is not None]
        # whole-number parameters stay whole next to a control's empty cell (rank 4, not 4.0)
        if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            table[column] = table[column].astype("Int64")
    return Results(table, list(parameters), list(metrics))


def results_table(logs: list[Path]) -> pd.DataFrame:
    return collect_results(logs).table


def read_training_log(log_dir: Path) -> pd.DataFrame:
    """Every step torchtune's DiskLogger wrote under ``log_dir`` (``log_<unix time>.txt``).

    A resumed training writes a new file that repeats the steps of the epoch it redoes: files
    are read oldest first and a step keeps its latest value.
    """
    steps: dict[int, dict] = {}
    files = sorted(log_dir.glob("log_*.txt"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
    for path in files:
        for line in path.read_text().splitlines():
            match = TRAINING_LOG_LINE.match(line.strip())
            if not match:
                continue
            values = {}
            for item in match.group("values").split():
                key, _, value = item.partition(":")
                try:
                    values[key] = float(value)
                except ValueError:
                    continue
            steps[int(match.group("step"))] = values
    table = pd.DataFrame.from_dict(steps, orient="index").sort_index()
    table.index.name = "step"
    return table.reset_index()


def training_losses(run_dirs: list[Path]) -> dict[str, pd.DataFrame]:
    """Run directory name -> its training log (steps with a loss), for runs that logged any."""
    losses = {}
    for run_dir in run_dirs:
        setup = run_setup(run_dir)
        log = read_training_log(Path(setup["training"]["output_dir"]) / "logs")
        if "loss" in log:
            losses[setup["run_dir"]] = log.dropna(subset=["loss"])
    return losses


def epoch_losses(run_dirs: list[Path]) -> dict[str, dict]:
    """Run directory name -> its manifest's per-epoch losses, for trained runs that have any."""
    found = {}
    for run_dir in run_dirs:
        losses = run_manifest(run_dir).get("losses")
        if losses:
            found[run_setup(run_dir)["run_dir"]] = losses
    return found


def best_val_epochs(losses: dict[str, dict]) -> dict[str, int]:
    """Run -> its epoch with the lowest validation loss, for runs that validated."""
    return {run: epoch for run, per_epoch in losses.items() if (epoch := best_epoch(per_epoch)) is not None}


@dataclass
class Plan:
    """What the experiment asks for: the evaluation logs and the fine-tuned runs' manifests."""

    evaluations: list[Path]
    trainings: list[Path] = field(default_factory=list)

    @property
    def missing_evaluations(self) -> list[Path]:
        return [path for path in self.evaluations if not path.is_file()]

    @property
    def missing_trainings(self) -> list[Path]:
        return [path for path in self.trainings if not path.is_file()]


def plan_on_disk(experiment_dir: Path) -> Plan:
    """The plan as the run directories record it (their ``setup_finetune.yaml``): for a report
    while the workflow is still running or after some of its jobs failed."""
    evaluations, trainings = [], []
    for setup_path in sorted(experiment_dir.glob("*/setup_finetune.yaml")):
        run_dir, setup = setup_path.parent, run_setup(setup_path.parent)
        if setup["type"] == "fine-tuned":
            trainings.append(run_dir / "finetune_manifest.json")
        for task, spec in setup["evaluation"]["tasks"].items():
            evaluations += [run_dir / "eval" / "logs" / eval_log_name(task, checkpoint) for checkpoint in spec["checkpoints"]]
    return Plan(evaluations, trainings)


@dataclass
class ReportFiles:
    table: Path
    summary: Path
    plots: Path

    @classmethod
    def under(cls, results_dir: Path) -> ReportFiles:
        return cls(results_dir / "results.csv", results_dir / "summary.md", results_dir / "plots")


# --- summary.md ---------------------------------------------------------------------------


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _number(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _score(row: pd.Series, metric: str) -> str:
    """A score with three decimals, and its standard error where the scorer reports one."""
    if pd.isna(row[metric]):
        return "-"
    text = f"{row[metric]:.3f}"
    stderr = row.get("stderr") if metric == PRIMARY_METRIC else None
    return f"{text} ± {stderr:.3f}" if stderr is not None and not pd.isna(stderr) else text


def markdown_table(header: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        return _number(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _parameter_text(row: pd.Series, parameters: list[str]) -> str:
    return ", ".join(f"{p}={_number(row[p])}" for p in parameters if not pd.isna(row[p])) or "-"


def best_runs(results: Results) -> pd.DataFrame:
    """Per task, the fine-tuned evaluation (run and epoch) with the highest primary metric."""
    metric = results.primary_metric
    scored = results.fine_tuned.dropna(subset=[metric])
    if scored.empty:
        return scored
    return scored.loc[scored.groupby("task", sort=False)[metric].idxmax()]


def factor_effects(results: Results, parameter: str) -> pd.DataFrame:
    """Mean, lowest and highest primary metric and number of runs per level of ``parameter``
    and task, over each fine-tuned run's last evaluated epoch."""
    metric = results.primary_metric
    final = results.final_epochs().dropna(subset=[metric, parameter])
    return final.groupby([parameter, "task"], sort=True)[metric].agg(["mean", "min", "max", "count"]).reset_index()


def validation_rows(losses: dict[str, dict]) -> list[list]:
    """Per validated run: epochs validated, best epoch and its loss, last loss, overfitting."""
    rows = []
    for run, per_epoch in losses.items():
        values = val_losses(per_epoch)
        if not values:
            continue
        best = best_epoch(per_epoch)
        last = max(values)
        trains = {int(k.removeprefix("epoch_")): e.get("train_loss") for k, e in per_epoch.items() if isinstance(e, dict)}
        rows.append([run, len(values), best, values[best], trains.get(best), last, values[last], overfitting_note(per_epoch) or "no"])
    return rows


def summary_markdown(
    results: Results, plan: Plan, losses: dict[str, pd.DataFrame], plots: list[Path], experiment: str = "", epochs: dict | None = None
) -> str:
    metric, table = results.primary_metric, results.table
    varying = results.varying_parameters()
    tasks = list(dict.fromkeys(table["task"]))
    lines = [
        f"# Results{': ' + experiment if experiment else ''}",
        "",
        f"{len(table)} of {len(plan.evaluations)} planned evaluations have a log"
        f" ({_count(results.fine_tuned['run'].nunique(), 'fine-tuned run')}, {_count(results.controls['run'].nunique(), 'control')},"
        f" {_count(len(tasks), 'task')}); runs are ranked by **{metric}**."
        f" Written {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}.",
        "",
        "## Best run per task",
        "",
    ]
    best = best_runs(results)
    if best.empty:
        lines.append("No fine-tuned run has been evaluated.")
    else:
        controls = results.controls
        rows = []
        for _, row in best.iterrows():
            control = controls[controls["task"] == row["task"]][metric].dropna()
            gain = f"{row[metric] - control.max():+.3f}" if not control.empty else "-"
            rows.append([row["task"], row["run"], row["run_name"], row["epoch"], _score(row, metric), gain, _parameter_text(row, varying)])
        lines.append(markdown_table(["task", "run", "run name", "epoch", metric, "gain over best control", "factors"], rows))
    lines += ["", "## Control", ""]
    if results.controls.empty:
        lines.append("No control (base model) has been evaluated.")
    else:
        rows = [
            [row["task"], row["run"], row["run_name"], row["model"] if "model" in row else "-", _score(row, metric)]
            for _, row in results.controls.iterrows()
        ]
        lines.append(markdown_table(["task", "run", "run name", "model", metric], rows))
    lines += ["", "## Effect of each factor", ""]
    if not varying:
        lines.append("No parameter varies across the evaluated fine-tuned runs.")
    else:
        several_epochs = results.fine_tuned.groupby(["run", "task"])["epoch"].nunique().gt(1).any()
        lines.append(
            f"Mean {metric} per level (lowest–highest, number of runs)"
            + (", each run at its last evaluated epoch." if several_epochs else ".")
        )
        for parameter in varying:
            effects = factor_effects(results, parameter)
            lines += ["", f"### {parameter}", ""]
            levels = sorted(effects[parameter].unique(), key=level_order)
            rows = []
            for level in levels:
                cells = [level]
                for task in tasks:
                    found = effects[(effects[parameter] == level) & (effects["task"] == task)]
                    if found.empty:
                        cells.append("-")
                    else:
                        effect = found.iloc[0]
                        cells.append(f"{effect['mean']:.3f} ({effect['min']:.3f}–{effect['max']:.3f}, n={effect['count']})")
                rows.append(cells)
            lines.append(markdown_table([parameter, *tasks], rows))
    lines += ["", "## Missing or failed", ""]
    failures = {path: (read_record(sidecar_path(path)) or {}) for path in plan.evaluations}
    failures = {
        path: record.get("error") or record.get("status")
        for path, record in failures.items()
        if record.get("status") not in (None, SUCCESS)
    }
    problems = [f"- evaluation `{path}`: failed: {error}" + ("" if path.is_file() else " (no log)") for path, error in failures.items()]
    problems += [f"- evaluation `{path}`: planned, no log" for path in plan.missing_evaluations if path not in failures]
    problems += [
        f"- evaluation `{row['log']}`: inspect status {row['status']}" for _, row in table[table["status"] != "success"].iterrows()
    ]
    problems += [f"- training `{path.parent.name}`: not finished (no {path.name})" for path in plan.missing_trainings]
    lines += problems or [f"None: every planned evaluation ({len(plan.evaluations)}) has a successful log, every training finished."]
    if losses:
        lines += ["", "## Training", ""]
        rows = [[run, int(log["step"].iloc[-1]), log["loss"].iloc[0], log["loss"].iloc[-1]] for run, log in losses.items()]
        lines.append(markdown_table(["run", "steps", "first loss", "last loss"], rows))
    validated = validation_rows(epochs or {})
    if validated:
        lines += ["", "## Validation", ""]
        lines.append(
            "Per run the epoch with the lowest validation loss (token-weighted over the validation split, at the epoch's end);"
            " a run overfits when its validation loss rose 2 or more epochs in a row."
        )
        lines.append("")
        header = ["run", "epochs validated", "best epoch", "val loss", "train loss", "last epoch", "last val loss", "overfitting"]
        lines.append(markdown_table(header, validated))
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{path.stem}]({path.as_posix()})" for path in plots]
    return "\n".join(lines) + "\n"


def level_order(value):
    """Numbers in numeric order before text levels in text order."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def format_table(table: pd.DataFrame) -> str:
    """The results as a compact text table for the terminal."""
    if table.empty:
        return "(no evaluations yet)"
    hidden = {"log", "model_path", "run_name", "scorer", "status"}
    shown = table[[c for c in table.columns if c not in hidden]].copy()
    for column in shown.columns[shown.dtypes == "Int64"]:
        shown[column] = shown[column].astype(object).where(shown[column].notna(), math.nan)  # "-", not <NA>
    return shown.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.3g}")
