"""The report's figures (matplotlib PNG): score vs each factor, score vs epoch (each run's
best-validation-loss epoch marked), training loss, and training with validation loss.

This module reads :mod:`snaketune.results`; results never imports it (:mod:`snaketune.report`
uses both)."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # jobs have no display; the report only writes files

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from snaketune.results import Results, best_val_epochs, level_order  # noqa: E402
from snaketune.validation import val_losses  # noqa: E402

# Beyond this many lines a legend hides the plot; the lines stay, the legend goes.
MAX_LEGEND_ENTRIES = 20


def _file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", str(text)).strip("_") or "x"


def _level_label(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _control_lines(axes, controls: pd.DataFrame, metric: str) -> None:
    """The controls (base models) as dashed horizontal reference lines."""
    for index, (_, control) in enumerate(controls.dropna(subset=[metric]).iterrows()):
        axes.axhline(control[metric], linestyle="--", color=f"C{7 + index % 3}", linewidth=1.2, label=f"control {control['run']}")


def _finish(figure, axes, out: Path, legend_entries: int) -> Path:
    if 0 < legend_entries <= MAX_LEGEND_ENTRIES:
        axes.legend(fontsize="small", loc="best")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def score_by_parameter(results: Results, task: str, parameter: str, out: Path) -> Path:
    """Each fine-tuned run's score (last evaluated epoch) at its level of ``parameter``.

    Levels sit at equal distances in sorted order (grids are usually log-spaced). With exactly
    one other factor, one line per level of that factor; otherwise the mean over the runs.
    """
    metric = results.primary_metric
    final = results.final_epochs()
    final = final[(final["task"] == task)].dropna(subset=[metric, parameter])
    levels = sorted(final[parameter].unique(), key=level_order)
    position = {level: index for index, level in enumerate(levels)}
    others = [p for p in results.varying_parameters() if p != parameter]
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    entries = 0
    groups = final.groupby(others[0], sort=False) if len(others) == 1 else [(None, final)]
    for group_index, (group, rows) in enumerate(sorted(groups, key=lambda item: level_order(item[0]))):
        rows = rows.assign(x=rows[parameter].map(position)).sort_values("x")
        stderr = rows["stderr"] if metric == "accuracy" and "stderr" in rows else None
        color = f"C{group_index % 7}"
        if group is None:
            axes.errorbar(rows["x"], rows[metric], yerr=stderr, fmt="o", color=color, alpha=0.6, capsize=3, label="run")
            means = rows.groupby("x")[metric].mean()
            axes.plot(means.index, means.values, "-", color=color, label="mean")
            entries += 2
        else:
            axes.errorbar(
                rows["x"], rows[metric], yerr=stderr, fmt="o-", color=color, capsize=3, label=f"{others[0]}={_level_label(group)}"
            )
            entries += 1
    controls = results.controls[results.controls["task"] == task]
    _control_lines(axes, controls, metric)
    entries += len(controls)
    axes.set_xticks(range(len(levels)), [_level_label(level) for level in levels])
    axes.set_xlabel(parameter)
    axes.set_ylabel(metric)
    axes.set_title(f"{task}: {metric} by {parameter}")
    return _finish(figure, axes, out, entries)


def score_by_epoch(results: Results, task: str, out: Path, best: dict[str, int] | None = None) -> Path:
    """One line per fine-tuned run through its evaluated epochs; controls as reference lines;
    each run's epoch of lowest validation loss (``best``: run -> epoch) circled when evaluated."""
    metric = results.primary_metric
    rows = results.by_epoch[results.by_epoch["task"] == task].dropna(subset=[metric, "epoch"])
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    marked = False
    for index, (run, run_rows) in enumerate(rows.groupby("run", sort=False)):
        run_rows = run_rows.sort_values("epoch")
        stderr = run_rows["stderr"] if metric == "accuracy" and "stderr" in run_rows else None
        color = f"C{index % 10}"
        axes.errorbar(run_rows["epoch"].astype(int), run_rows[metric], yerr=stderr, fmt="o-", capsize=3, color=color, label=run)
        at_best = run_rows[run_rows["epoch"] == (best or {}).get(run, -1)]
        if len(at_best):
            label = None if marked else "lowest validation loss"
            axes.plot(at_best["epoch"].astype(int), at_best[metric], "o", markersize=13, fillstyle="none", color="black", label=label)
            marked = True
    controls = results.controls[results.controls["task"] == task]
    _control_lines(axes, controls, metric)
    epochs = sorted(int(epoch) for epoch in rows["epoch"].dropna().unique())
    axes.set_xticks(epochs)
    axes.set_xlabel("epoch (0-indexed)")
    axes.set_ylabel(metric)
    axes.set_title(f"{task}: {metric} by epoch")
    return _finish(figure, axes, out, rows["run"].nunique() + len(controls) + marked)


def training_loss(losses: dict[str, pd.DataFrame], out: Path) -> Path:
    """torchtune's per-step training loss, one line per run."""
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for index, (run, log) in enumerate(losses.items()):
        axes.plot(log["step"], log["loss"], linewidth=1, color=f"C{index % 10}", label=run)
    axes.set_xlabel("step")
    axes.set_ylabel("training loss")
    axes.set_title("Training loss per run")
    return _finish(figure, axes, out, len(losses))


def training_and_validation_loss(losses: dict[str, pd.DataFrame], epochs: dict[str, dict], out: Path) -> Path:
    """Per run (one color each): the training loss per step (thin line) and, beside it on the
    right, the validation loss at every step that validated (markers; the epoch ends' records
    when the step log has none). Two panels keep 16 runs readable; the legend goes beyond 20."""
    runs = list(dict.fromkeys([*losses, *epochs]))
    colors = plt.get_cmap("tab20" if len(runs) > 10 else "tab10")
    figure, (train_axes, val_axes) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=False)
    for index, run in enumerate(runs):
        color = colors(index % colors.N)
        log = losses.get(run)
        if log is not None:
            train_axes.plot(log["step"], log["loss"], linewidth=0.8, alpha=0.8, color=color, label=run)
        if log is not None and "val_loss" in log and log["val_loss"].notna().any():
            points = log.dropna(subset=["val_loss"])
            val_axes.plot(points["step"], points["val_loss"], "o-", markersize=3, linewidth=1, color=color, label=run)
        elif val_losses(epochs.get(run)):
            values = val_losses(epochs[run])
            val_axes.plot(list(values), list(values.values()), "o-", markersize=3, linewidth=1, color=color, label=run)
            val_axes.set_xlabel("epoch (0-indexed) / step")
    train_axes.set_xlabel("step")
    train_axes.set_ylabel("loss")
    train_axes.set_title("Training loss")
    train_axes.grid(alpha=0.3)
    val_axes.set_xlabel(val_axes.get_xlabel() or "step")
    val_axes.set_title("Validation loss")
    return _finish(figure, val_axes, out, len(runs))


def write_plots(results: Results, losses: dict[str, pd.DataFrame], plots_dir: Path, epochs: dict[str, dict] | None = None) -> list[Path]:
    """Every figure the results support, into ``plots_dir`` (replacing its previous figures).
    ``epochs``: run -> its manifest's per-epoch losses (validation curves, best epochs)."""
    epochs = epochs or {}
    best = best_val_epochs(epochs)
    plots_dir.mkdir(parents=True, exist_ok=True)
    for old in plots_dir.glob("*.png"):
        old.unlink()  # a figure of a factor that no longer varies would mislead
    written = []
    metric = results.primary_metric
    evaluated_epochs = results.by_epoch.groupby("task")["epoch"].nunique()
    for task in dict.fromkeys(results.table["task"]):
        for parameter in results.varying_parameters():
            out = plots_dir / f"{_file_part(task)}_{metric}_by_{_file_part(parameter)}.png"
            written.append(score_by_parameter(results, task, parameter, out))
        if evaluated_epochs.get(task, 0) > 1:
            written.append(score_by_epoch(results, task, plots_dir / f"{_file_part(task)}_{metric}_by_epoch.png", best))
    if losses:
        written.append(training_loss(losses, plots_dir / "training_loss.png"))
    if best:
        written.append(training_and_validation_loss(losses, epochs, plots_dir / "validation_loss.png"))
    return written
