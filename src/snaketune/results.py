"""Aggregate the evaluation logs of an experiment into ``results/results.csv``.

Scores are read with inspect-ai's own log API (``read_eval_log``), never by unpacking files.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pandas as pd
import yaml

from snaketune.render import write_atomic
from snaketune.scaffold import EVAL_LOG

FIRST_COLUMNS = ["run", "run_name", "type", "task", "epoch", "checkpoint"]


@cache
def _setup(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / "setup_finetune.yaml").read_text())


def evaluation_row(log_path: Path) -> dict:
    """One results row: the evaluation's identity, the run's parameters and its scores.

    The log's place names it (``<run_dir>/eval/logs/<task>_<checkpoint>.eval``); the run's
    ``setup_finetune.yaml`` gives its name, type and parameter values.
    """
    from inspect_ai.log import read_eval_log

    name = EVAL_LOG.match(log_path.name)
    if name is None:
        raise ValueError(f"{log_path} is not named <task>_<checkpoint>.eval")
    setup = _setup(log_path.parent.parent.parent)
    log = read_eval_log(str(log_path), header_only=True)
    checkpoint = name.group("checkpoint")
    row = {
        "run": setup["run_dir"],
        "run_name": setup["run_name"],
        "type": setup["type"],
        "task": name.group("task"),
        "epoch": int(checkpoint.removeprefix("epoch_")) if checkpoint.startswith("epoch_") else None,
        "checkpoint": checkpoint,
        **setup["table"],
    }
    scores = log.results.scores if log.results else []
    for score in scores:
        prefix = "" if score is scores[0] else f"{score.name}_"
        for name, metric in score.metrics.items():
            row[prefix + name] = metric.value
    row.setdefault("accuracy", None)
    row["samples"] = log.results.completed_samples if log.results else 0
    row["model_path"] = log.eval.model_args.get("model_path", "")
    row["log"] = str(log_path)
    return row


def results_table(logs: list[Path]) -> pd.DataFrame:
    rows = [evaluation_row(path) for path in logs]
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=[*FIRST_COLUMNS, "accuracy", "samples", "model_path", "log"])
    table["epoch"] = table["epoch"].astype("Int64")
    return table


def write_results(logs: list[Path], out: Path) -> pd.DataFrame:
    table = results_table(logs)
    write_atomic(out, table.to_csv(index=False))
    return table


def format_table(table: pd.DataFrame) -> str:
    """The results as a compact text table for the terminal."""
    if table.empty:
        return "(no evaluations yet)"
    hidden = {"log", "model_path", "run_name"}
    shown = table[[c for c in table.columns if c not in hidden]]
    return shown.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.3g}")
