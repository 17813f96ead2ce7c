"""The report of an experiment: ``results.csv``, ``summary.md`` and the figures in ``plots/``.

The one module that uses both :mod:`snaketune.results` (tables, summary) and
:mod:`snaketune.plots` (figures); those two import one way only (plots -> results).
"""

from __future__ import annotations

import os
from pathlib import Path

from snaketune.plots import write_plots
from snaketune.render import write_atomic
from snaketune.results import (
    Plan,
    ReportFiles,
    Results,
    collect_results,
    epoch_losses,
    run_dir_of_log,
    run_setup,
    summary_markdown,
    training_losses,
)


def write_report(plan: Plan, files: ReportFiles) -> Results:
    """results.csv, the plots and summary.md from the evaluation logs that exist."""
    results = collect_results([path for path in plan.evaluations if path.is_file()])
    write_atomic(files.table, results.table.to_csv(index=False))
    run_dirs = [path.parent for path in plan.trainings] + [run_dir_of_log(path) for path in plan.evaluations]
    run_dirs = [run_dir for run_dir in dict.fromkeys(run_dirs) if (run_dir / "setup_finetune.yaml").is_file()]
    experiment = run_setup(run_dirs[0])["experiment"] if run_dirs else ""
    trained = [path.parent for path in plan.trainings if path.parent in run_dirs]
    losses = training_losses(trained)
    epochs = epoch_losses(trained)
    plots = write_plots(results, losses, files.plots, epochs)
    # linked from summary.md, so relative to it: the results folder can be copied as a whole
    plot_links = [Path(os.path.relpath(path, files.summary.parent)) for path in plots]
    summary = summary_markdown(results, plan, losses, plot_links, experiment, epochs)
    write_atomic(files.summary, summary)
    return results
