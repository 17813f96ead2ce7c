"""What the Snakefile calls at DAG-build time: load the plan once, and warn about missing paths."""

from __future__ import annotations

import json
from pathlib import Path

from snaketune.naming import load_registry
from snaketune.parse import read_summary
from snaketune.plan import BUILTIN_TASK, ExperimentPlan, RunPlan, plan_experiment


def load_plan(summary: Path, config: dict) -> ExperimentPlan:
    """Parse the summary and plan every run (at DAG-build time, once per invocation)."""
    experiment = read_summary(summary)
    return plan_experiment(experiment, config, load_registry(experiment.directory))


def scaffold_payload(run: RunPlan) -> str:
    """What the per-run scaffold job needs, as one JSON argument (also its change detector)."""
    return json.dumps({"key": run.key, "setup": run.setup})


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
