"""What the Snakefile calls at DAG-build time: load the plan once, decide what changed."""

from __future__ import annotations

import json
from pathlib import Path

from snaketune.config_check import check_config
from snaketune.naming import load_registry
from snaketune.parse import BEST, read_summary
from snaketune.plan import BUILTIN_TASK, ExperimentPlan, RunPlan, plan_experiment
from snaketune.scaffold import eval_log_name
from snaketune.state import (
    MANIFEST,
    SUCCESS,
    VALIDATION_RECORD,
    evaluation_digest,
    evaluation_outdated,
    read_record,
    sidecar_path,
    training_digest,
    training_outdated,
    write_record,
)
from snaketune.validation import best_outdated, run_losses, unvalidated_epochs


def load_plan(summary: Path, config: dict) -> ExperimentPlan:
    """Parse the summary and plan every run (at DAG-build time, once per invocation)."""
    experiment = read_summary(summary)
    return plan_experiment(experiment, config, load_registry(experiment.directory))


def workflow_config(configfiles: list[Path] = ()) -> dict:
    """The workflow's ``config/config.yaml`` with the user's ``--configfile`` files merged on top."""
    import yaml

    def merge(base: dict, update: dict) -> dict:
        for key, value in update.items():
            base[key] = merge(base.get(key) or {}, value) if isinstance(value, dict) else value
        return base

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "config" / "config.yaml").read_text())
    for path in configfiles:
        merge(config, yaml.safe_load(Path(path).read_text()) or {})
    check_config(config)
    return config


def settings_digests(run: RunPlan) -> dict:
    """Digests of the settings each of the run's jobs depends on, per the plan.

    Computed once per run (cached on the plan): at DAG-build time every job of the run asks.
    """
    if not run.digests:
        setup = run.setup
        digests = {"evaluation": {task: evaluation_digest(setup, task) for task in setup["evaluation"]["tasks"]}}
        if run.fine_tuned:
            digests["training"] = training_digest(setup)
        run.digests = digests
    return run.digests


def training_rerun_reason(plan: ExperimentPlan, run: RunPlan) -> str | None:
    """Why the run's finished training must be redone, or None (also when it has not finished:
    Snakemake runs a job whose output is missing by itself)."""
    manifest = plan.directory / run.run_dir / MANIFEST
    if not manifest.exists():
        # Snakemake would leave it missing when everything downstream looks current
        if Path(run.setup["training"]["output_dir"]).exists():
            return "its manifest is missing (its job was interrupted, or the file deleted)"
        return None
    return training_outdated(read_record(manifest), settings_digests(run)["training"])


def evaluation_rerun_reason(plan: ExperimentPlan, run: RunPlan, task: str, checkpoint: str) -> str | None:
    """Why a planned evaluation must be (re)done, or None when its log is current."""
    log = plan.directory / run.run_dir / "eval" / "logs" / eval_log_name(task, checkpoint)
    if not log.exists():
        failed = read_record(sidecar_path(log)) or {}
        return f"it failed: {failed.get('error')}" if failed.get("status") not in (None, SUCCESS) else "it has no log"
    if run.fine_tuned and training_rerun_reason(plan, run):
        return "its run's training is redone"
    digests = settings_digests(run)
    sidecar = read_record(sidecar_path(log))
    why = evaluation_outdated(sidecar, digests["evaluation"][task], digests.get("training"))
    if why is None and checkpoint == BEST:
        why = validation_rerun_reason(plan, run) or best_outdated(sidecar, run_losses(plan.directory / run.run_dir))
    return why


def validation_rerun_reason(plan: ExperimentPlan, run: RunPlan) -> str | None:
    """Why the run's validate job must run: it validates during training, its finished training
    is current, and epochs of it have no validation loss (trained before validation was on)."""
    if not run.fine_tuned or not run.setup["training"]["validation"]:
        return None
    directory = plan.directory / run.run_dir
    if not (directory / MANIFEST).exists() or training_rerun_reason(plan, run):
        return None  # the training to come validates every epoch itself
    manifest = read_record(directory / MANIFEST)
    missing = unvalidated_epochs(manifest, read_record(directory / VALIDATION_RECORD))
    if not missing:
        return None
    return f"epoch(s) {', '.join(map(str, missing))} were trained without validation"


def validation_records(plan: ExperimentPlan) -> list[str]:
    """The validate jobs' records the workflow asks for: of runs that need one now or have one."""
    return [
        f"{run.run_dir}/{VALIDATION_RECORD}"
        for run in plan.runs
        if run.fine_tuned
        and run.setup["training"]["validation"]
        and ((plan.directory / run.run_dir / VALIDATION_RECORD).exists() or validation_rerun_reason(plan, run))
    ]


def best_checkpoint_notes(plan: ExperimentPlan, limit: int = 3) -> list[str]:
    """What the dry run says of each ``best`` evaluation still to do: which epochs it chooses
    from, and that it is decided after training (the first ``limit`` runs, then a count)."""
    notes = []
    for run in plan.runs:
        tasks = [e.task for e in run.evaluations if e.checkpoint == BEST]
        if not tasks or all(evaluation_rerun_reason(plan, run, task, BEST) is None for task in tasks):
            continue
        last = int(run.setup["training"]["epochs"]) - 1
        epochs = "epoch 0" if last == 0 else f"epochs 0–{last}"
        notes.append(
            f"{run.run_dir}: evaluates the best epoch by validation loss ({', '.join(f'{t}_best.eval' for t in tasks)}):"
            f" best of {epochs}, decided after training"
        )
    if len(notes) > limit:
        notes = notes[:limit] + [f"(and {len(notes) - limit} more runs evaluate their best epoch, decided after training)"]
    return notes


def scaffold_payload(run: RunPlan) -> str:
    """What the per-run scaffold job needs, as one JSON argument (also its change detector)."""
    return json.dumps({"key": run.key, "setup": run.setup})


DATASET_SIZES = Path(".snaketune") / "dataset_sizes.json"


def batch_warnings(plan: ExperimentPlan) -> list[str]:
    """Runs whose batch is larger than their training split: such a training never takes a step.

    For the driver only (the jobs' re-parses must stay cheap): each dataset on this machine is
    read once, and its size cached by path, size and modification time in
    ``<experiment>/.snaketune/dataset_sizes.json``, written by :func:`store_dataset_sizes` when
    the workflow starts (a dry run writes nothing).
    """
    from snaketune.finetune import split_size

    known = plan.dataset_sizes
    known.update(read_record(plan.directory / DATASET_SIZES) or {})
    warnings = []
    for run in plan.runs:
        if not run.fine_tuned:
            continue
        setup, training = run.setup, run.setup["training"]
        split = training["train_split"]
        path = setup["dataset"] if setup["dataset_format"] == "json" else str(Path(setup["dataset"]) / f"{split}.parquet")
        try:
            stat = Path(path).stat()
        except OSError:
            continue  # not on this machine: the job checks where it runs
        key = f"{path}|{split}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in known:
            try:
                known[key] = split_size(path, split if setup["dataset_format"] == "json" else None)
            except Exception:  # an unreadable dataset is the finetune job's error to report
                continue
        batch = training["batch_size"] * training["gradient_accumulation_steps"]
        if batch > known[key]:
            source = plan.experiment
            row = next(r for r in source.runs if r.name == run.name)
            line = row.line if "batch_size" in row.params else source.config_lines.get("batch_size", row.line)
            warnings.append(
                f"{source.path}, line {line}: run {run.name!r}: batch size {training['batch_size']} x {training['gradient_accumulation_steps']}"
                f" accumulation is larger than the {split!r} split of {path} ({known[key]} samples): it would never take a training step"
            )
    return warnings


def validation_split_problems(plan: ExperimentPlan) -> tuple[list[str], list[str]]:
    """Runs that validate during training, checked against their dataset's validation split:
    errors (the dataset is here and the split is missing or empty: the file, the summary's line
    and the cause) and warnings (the dataset is not on this machine: the finetune job checks it
    where it runs). For the driver only; each dataset is read once (sizes cached as in
    :func:`batch_warnings`)."""
    from snaketune.finetune import split_size

    known = plan.dataset_sizes
    known.update(read_record(plan.directory / DATASET_SIZES) or {})
    errors, warnings, seen = [], [], set()
    source = plan.experiment
    for run in plan.runs:
        if not run.fine_tuned or not run.setup["training"]["validation"]:
            continue
        setup, training = run.setup, run.setup["training"]
        split = training["validation_split"]
        path = setup["dataset"] if setup["dataset_format"] == "json" else str(Path(setup["dataset"]) / f"{split}.parquet")
        if (path, split) in seen:
            continue
        seen.add((path, split))
        row = next(r for r in source.runs if r.name == run.name)
        if "validation" in row.params:
            where = f"{source.path}, line {row.line}"
        elif "validation" in source.config_lines:
            where = f"{source.path}, line {source.config_lines['validation']}"
        else:
            where = f"{source.path}, line {row.line} (run {run.name!r}; training.validation in the config)"
        if not Path(setup["dataset"]).exists():
            warnings.append(
                f"{where}: validation during training is on; dataset {setup['dataset']} is not on this machine, so its {split!r} split"
                " is not checked here (the finetune job fails early where it runs if it is missing or empty)"
            )
            continue
        try:
            stat = Path(path).stat()
        except OSError:
            errors.append(
                f"{where}: validation during training is on, but dataset {setup['dataset']} has no {split!r} split ({path} does not exist)"
            )
            continue
        key = f"{path}|{split}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in known:
            try:
                known[key] = split_size(path, split if setup["dataset_format"] == "json" else None)
            except (KeyError, TypeError):
                errors.append(f"{where}: validation during training is on, but dataset {path} has no {split!r} split")
                continue
            except Exception:  # an unreadable dataset is the finetune job's error to report
                continue
        if known[key] == 0:
            errors.append(f"{where}: validation during training is on, but the {split!r} split of {path} is empty")
    return errors, warnings


def store_dataset_sizes(plan: ExperimentPlan) -> None:
    if plan.dataset_sizes and plan.dataset_sizes != read_record(plan.directory / DATASET_SIZES):
        write_record(plan.directory / DATASET_SIZES, plan.dataset_sizes)


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


# The rules whose forced rerun redoes a run's evaluations / repeats its training job. Forcing an
# upstream rule reaches no further: what is current (the manifests, the sidecars) is not redone.
_REDO_EVALUATIONS = {"evaluate"}
_REDO_TRAINING = {"finetune"}


def forced_rerun_notes(plan: ExperimentPlan, forceall: bool, forcerun: set[str], forcetargets: bool, targets: set[str]) -> list[str]:
    """What a forced rerun (``-F``, ``-R``, ``-f``) would redo that is already finished.

    Snakemake's dry run says only "Forced execution"; researchers need to know which finished
    results are at stake (kept, not deleted) and that finished trainings are not repeated.
    Targets are matched by run directory, so the notes cover at most what the DAG will redo.
    """
    if not (forceall or forcerun or (forcetargets and targets)):
        return []
    files = {str(Path(t)) for t in forcerun | (targets if forcetargets else set())}
    target_runs = {Path(t).parts[0] for t in targets if len(Path(t).parts) > 1}
    redone_logs, kept_trainings = [], []
    for run in plan.runs:
        if target_runs and run.run_dir not in target_runs:
            continue
        logs = [f"{run.run_dir}/eval/logs/{e.task}_{e.checkpoint}.eval" for e in run.evaluations]
        # a forced evaluation job redoes all of its run's pairs
        forced = forceall or bool(forcerun & _REDO_EVALUATIONS) or f"{run.run_dir}/eval/evaluations.json" in files
        redone_logs += [log for log in logs if forced and (plan.directory / log).is_file()]
        manifest = f"{run.run_dir}/finetune_manifest.json"
        if (forceall or forcerun & _REDO_TRAINING or manifest in files) and (plan.directory / manifest).is_file():
            kept_trainings.append(run.run_dir)
    notes = []
    if redone_logs:
        notes.append(
            f"this forced rerun redoes {len(redone_logs)} finished evaluation(s); each previous log is kept in its"
            f" eval/logs/superseded-<time>-…/ folder, not deleted: " + ", ".join(redone_logs)
        )
    if kept_trainings:
        notes.append(
            f"{len(kept_trainings)} finished training(s) are not repeated by a forced rerun (the finetune job only checks"
            f" the saved epochs; move ck-out-<run> aside to retrain one): " + ", ".join(kept_trainings)
        )
    return notes
