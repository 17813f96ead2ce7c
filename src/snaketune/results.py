"""Aggregate the evaluation logs of an experiment into ``results/results.csv``.

Scores are read with inspect-ai's own log API (``read_eval_log``), never by unpacking files.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from snaketune.render import write_atomic

FIRST_COLUMNS = ["run", "run_name", "type", "task", "epoch", "checkpoint"]


def evaluation_row(log_path: Path, meta: dict) -> dict:
    """One results row: the evaluation's identity, the run's parameters and its scores."""
    from inspect_ai.log import read_eval_log

    log = read_eval_log(str(log_path), header_only=True)
    checkpoint = meta["checkpoint"]
    row = {
        "run": meta["run"],
        "run_name": meta["run_name"],
        "type": meta["type"],
        "task": meta["task"],
        "epoch": int(checkpoint.removeprefix("epoch_")) if checkpoint.startswith("epoch_") else None,
        "checkpoint": checkpoint,
        **meta["parameters"],
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


def results_table(logs: list[Path], metas: list[dict]) -> pd.DataFrame:
    rows = [evaluation_row(path, meta) for path, meta in zip(logs, metas, strict=True)]
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=[*FIRST_COLUMNS, "accuracy", "samples", "model_path", "log"])
    table["epoch"] = table["epoch"].astype("Int64")
    return table


def write_results(logs: list[Path], metas: list[dict], out: Path) -> pd.DataFrame:
    table = results_table(logs, metas)
    write_atomic(out, table.to_csv(index=False))
    return table


def format_table(table: pd.DataFrame) -> str:
    """The results as a compact text table for the terminal."""
    if table.empty:
        return "(no evaluations yet)"
    hidden = {"log", "model_path", "run_name"}
    shown = table[[c for c in table.columns if c not in hidden]]
    return shown.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.3g}")
