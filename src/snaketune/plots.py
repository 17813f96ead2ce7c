"""The report's figures (matplotlib PNG): score vs each factor, score vs epoch, training loss."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # jobs have no display; the report only writes files

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from snaketune.results import Results, level_order  # noqa: E402

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


def score_by_epoch(results: Results, task: str, out: Path) -> Path:
    """One line per fine-tuned run through its evaluated epochs; controls as reference lines."""
    metric = results.primary_metric
    rows = results.fine_tuned[results.fine_tuned["task"] == task].dropna(subset=[metric])
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for index, (run, run_rows) in enumerate(rows.groupby("run", sort=False)):
        run_rows = run_rows.sort_values("epoch")
        stderr = run_rows["stderr"] if metric == "accuracy" and "stderr" in run_rows else None
        axes.errorbar(run_rows["epoch"].astype(int), run_rows[metric], yerr=stderr, fmt="o-", capsize=3, color=f"C{index % 10}", label=run)
    controls = results.controls[results.controls["task"] == task]
    _control_lines(axes, controls, metric)
    epochs = sorted(int(epoch) for epoch in rows["epoch"].dropna().unique())
    axes.set_xticks(epochs)
    axes.set_xlabel("epoch (0-indexed)")
    axes.set_ylabel(metric)
    axes.set_title(f"{task}: {metric} by epoch")
    return _finish(figure, axes, out, rows["run"].nunique() + len(controls))


def training_loss(losses: dict[str, pd.DataFrame], out: Path) -> Path:
    """torchtune's per-step training loss, one line per run."""
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for index, (run, log) in enumerate(losses.items()):
        axes.plot(log["step"], log["loss"], linewidth=1, color=f"C{index % 10}", label=run)
    axes.set_xlabel("step")
    axes.set_ylabel("training loss")
    axes.set_title("Training loss per run")
    return _finish(figure, axes, out, len(losses))


def write_plots(results: Results, losses: dict[str, pd.DataFrame], plots_dir: Path) -> list[Path]:
    """Every figure the results support, into ``plots_dir`` (replacing its previous figures)."""
    plots_dir.mkdir(parents=True, exist_ok=True)
    for old in plots_dir.glob("*.png"):
        old.unlink()  # a figure of a factor that no longer varies would mislead
    written = []
    metric = results.primary_metric
    evaluated_epochs = results.fine_tuned.groupby("task")["epoch"].nunique()
    for task in dict.fromkeys(results.table["task"]):
        for parameter in results.varying_parameters():
            out = plots_dir / f"{_file_part(task)}_{metric}_by_{_file_part(parameter)}.png"
            written.append(score_by_parameter(results, task, parameter, out))
        if evaluated_epochs.get(task, 0) > 1:
            written.append(score_by_epoch(results, task, plots_dir / f"{_file_part(task)}_{metric}_by_epoch.png"))
    if losses:
        written.append(training_loss(losses, plots_dir / "training_loss.png"))
    return written
