"""Glue the Snakefile calls: load the plan once, and the bodies of the local rules."""

from __future__ import annotations

import time
from pathlib import Path

from snaketune.naming import load_registry, record_run
from snaketune.parse import read_summary
from snaketune.plan import BUILTIN_TASK, ExperimentPlan, plan_experiment
from snaketune.scaffold import write_run_files


def load_plan(summary: Path, config: dict) -> ExperimentPlan:
    """Parse the summary and plan every run (at DAG-build time, once per invocation)."""
    experiment = read_summary(summary)
    return plan_experiment(experiment, config, load_registry(experiment.directory))


def missing_paths(plan: ExperimentPlan) -> list[str]:
    """One warning per model, dataset or task script path that does not exist on this machine.

    Planning on a laptop for the cluster is normal: these are not rule inputs, and the jobs
    themselves fail early and clearly where the path is missing.
    """
    paths: dict[str, str] = {}
    for run in plan.runs:
        paths.setdefault(run.setup["model_path"], f"model {run.setup['model']}")
        paths.setdefault(run.setup["dataset"], "dataset")
        for task, spec in run.setup["evaluation"]["tasks"].items():
            if spec["script"] != BUILTIN_TASK:
                paths.setdefault(spec["script"], f"task {task} script")
    return [
        f"{what} path {path} does not exist here (fine if it exists where the jobs run)"
        for path, what in paths.items()
        if not Path(path).exists()
    ]


def _log(log_path: str, message: str) -> None:
    with open(log_path, "a") as handle:
        handle.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}\n")


def scaffold_run(plan: ExperimentPlan, run_dir: str, config: dict, log_path: str) -> None:
    """Render all files of one run directory and record its name."""
    run = plan.run(run_dir)
    experiment_dir = plan.directory
    record_run(experiment_dir, next(r for r in plan.experiment.runs if r.name == run.name), run_dir)
    written = write_run_files(run.setup, experiment_dir / run_dir, config["environment"])
    _log(log_path, f"SCAFFOLD: {run_dir} ({run.name})\nDetails: " + ", ".join(str(p.relative_to(experiment_dir)) for p in written))
    if run.fine_tuned and run.setup["training"]["packing"]:
        _log(log_path, "WARNING: packing on: tokenizer.max_seq_len is an integer, so torchtune 0.6.1 masks the final EOS label")


def write_report(logs: list[str], metas: list[dict], out: str, log_path: str) -> None:
    from snaketune.results import format_table, write_results

    table = write_results([Path(p) for p in logs], metas, Path(out))
    _log(log_path, f"REPORT: {len(table)} evaluation(s) -> {out}\n{format_table(table)}")
