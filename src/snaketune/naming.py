"""Run directory names: built from the parameters that vary, and stable once given.

A run's directory is recorded in ``<exp>/.snaketune/runs/<run_dir>.json`` under the run's
key (its type, model and parameter values). Later rows that make another column vary get
names from the new varying set, but recorded runs keep theirs, so nothing is retrained or
orphaned because the experiment grew.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from snaketune.parse import Experiment, Run, SummaryError

ABBREVIATIONS = {
    "model": "",
    "lora_rank": "rank",
    "learning_rate": "lr",
    "batch_size": "bs",
    "lora_alpha": "alpha",
    "epochs": "ep",
}
# Directories the workflow writes beside the runs; a run may not take these names.
RESERVED = {"results", "logs", "data", "models", "eval", "ck-outputs", ".snaketune", ".snakemake"}
REGISTRY = Path(".snaketune") / "runs"


def short_model_name(model: str) -> str:
    """``Llama-3.2-1B-Instruct`` -> ``Llama-3.2-1B`` (a path keeps its last component)."""
    name = model.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"-instruct$", "", name, flags=re.IGNORECASE)


def _slug(value: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9.+=-]+", "-", value).strip("-.")
    return slug[:40] or "x"


def run_key(run: Run) -> str:
    """What identifies a run across edits of the summary: its type, model and parameters."""
    return json.dumps({"type": run.type, "model": run.model, **run.params}, sort_keys=True)


def varying_columns(experiment: Experiment) -> list[str]:
    """Parameter columns (``model`` first) whose effective value differs across fine-tuned runs."""
    runs = experiment.fine_tuned
    varying = []
    for column in ["model", *experiment.columns]:
        values = {_effective(experiment, run, column) for run in runs}
        if len(values) > 1:
            varying.append(column)
    return varying


def _effective(experiment: Experiment, run: Run, column: str) -> str:
    if column == "model":
        return run.model
    return run.params.get(column, experiment.config.get(column, ""))


def _proposed_name(experiment: Experiment, run: Run, varying: list[str]) -> str:
    if run.type == "control":
        return f"{_slug(short_model_name(run.model))}_base"
    parts = []
    for column in varying:
        value = _effective(experiment, run, column)
        if value == "":
            continue
        if column == "model":
            parts.append(_slug(short_model_name(value)))
        else:
            parts.append(ABBREVIATIONS.get(column, column.replace("_", "")) + _slug(value))
    return "_".join(parts) or _slug(run.name)


def read_registry(experiment_dir: Path) -> dict[str, dict]:
    """Run directory -> its record: the run's ``key`` and ``run_name`` (names only: what is
    current is decided by the manifests and sidecars the jobs write, see snaketune.state)."""
    folder = experiment_dir / REGISTRY
    if not folder.is_dir():
        return {}
    return {entry.stem: json.loads(entry.read_text()) for entry in sorted(folder.glob("*.json"))}


def load_registry(experiment_dir: Path) -> dict[str, str]:
    """Recorded run key -> run directory."""
    return {record["key"]: run_dir for run_dir, record in read_registry(experiment_dir).items()}


def record_run(experiment_dir: Path, key: str, run_name: str, run_dir: str) -> None:
    """Remember ``run_dir`` for the run ``key`` (atomic, one file per run so jobs never contend)."""
    folder = experiment_dir / REGISTRY
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{run_dir}.json"
    payload = json.dumps({"key": key, "run_name": run_name}, indent=1) + "\n"
    if target.exists() and json.loads(target.read_text())["key"] != key:
        raise RuntimeError(f"{target} already records another run; refusing to overwrite it")
    with tempfile.NamedTemporaryFile("w", dir=folder, delete=False, suffix=".tmp") as handle:
        handle.write(payload)
    os.replace(handle.name, target)


def run_directories(experiment: Experiment, registry: dict[str, str]) -> dict[str, str]:
    """Run name -> run directory for every run, keeping recorded names."""
    varying = varying_columns(experiment)
    taken = set(registry.values()) | RESERVED
    directories: dict[str, str] = {}
    first_with_key: dict[str, Run] = {}
    for run in experiment.runs:
        key = run_key(run)
        if key in first_with_key:
            other = first_with_key[key]
            raise SummaryError(
                experiment.path,
                run.line,
                f"run {run.name!r} repeats the parameters of run {other.name!r} (line {other.line}): the two would share one run directory",
            )
        first_with_key[key] = run
        if key in registry:
            directories[run.name] = registry[key]
            continue
        name = _proposed_name(experiment, run, varying)
        candidate, suffix = name, 2
        while candidate in taken:
            candidate, suffix = f"{name}-{suffix}", suffix + 1
        taken.add(candidate)
        directories[run.name] = candidate
    return directories
