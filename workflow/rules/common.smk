import inspect
import os
import re
import shlex
import sys
from collections import Counter
from pathlib import Path

from snakemake.common import overwrite_function_params
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate
from snakemake_interface_executor_plugins.settings import ExecMode

from snaketune.config_check import ConfigError, check_config
from snaketune.parse import SummaryError
from snaketune.prompts import cached_warnings as cached_parity_warnings
from snaketune.render import tune_command
from snaketune.workflow import (
    batch_warnings,
    evaluation_rerun_reason,
    forced_rerun_notes,
    load_plan,
    missing_paths,
    scaffold_payload,
    training_rerun_reason,
    validation_split_problems,
    best_checkpoint_notes,
    validation_records,
    validation_rerun_reason,
)

try:
    check_config(config)  # first: it names a misspelt key and the key meant
except ConfigError as error:
    raise WorkflowError(f"snaketune: {error}") from None
validate(config, schema="../schemas/config.schema.yaml")

# The summary path is resolved once, by the snakemake the user started, and handed to the
# jobs through the environment: each job re-parses this workflow, and the inner snakemake of
# a SLURM job does so from inside the experiment directory, where a relative path misleads.
if workflow.exec_mode == ExecMode.DEFAULT:
    os.environ.update(SNAKETUNE_EXPERIMENT=str(Path(config["experiment"]).absolute()))
EXPERIMENT = Path(
    os.environ.get("SNAKETUNE_EXPERIMENT", config["experiment"])
).absolute()

try:
    PLAN = load_plan(EXPERIMENT, config)
except (SummaryError, FileNotFoundError) as error:
    raise WorkflowError(str(error)) from None

for warning in PLAN.warnings + missing_paths(PLAN):
    logger.warning(f"snaketune: {warning}")

# Driver only (every job re-parses this file): what the scaffold jobs found comparing evaluation
# with training prompts (their logs are not read), and batches larger than a training split.
if workflow.exec_mode == ExecMode.DEFAULT:
    for warning in cached_parity_warnings(PLAN) + batch_warnings(PLAN):
        logger.warning(f"snaketune: {warning}")
    # validation during training needs a validation split: rejected here when it is not
    VALIDATION_ERRORS, VALIDATION_WARNINGS = validation_split_problems(PLAN)
    if VALIDATION_ERRORS:
        raise WorkflowError("snaketune: " + "\nsnaketune: ".join(VALIDATION_ERRORS))
    for warning in VALIDATION_WARNINGS:
        logger.warning(f"snaketune: {warning}")
    for note in best_checkpoint_notes(PLAN):
        logger.info(f"snaketune: {note}")


# Every run's files live in its directory inside the experiment directory.
workdir: PLAN.directory


envvars:
    "PATH",
    "SNAKETUNE_EXPERIMENT",


# Jobs call `python -m snaketune` and `tune` from the environment snakemake runs in, even
# when it was started as .venv/bin/snakemake without activating the venv.
os.environ["PATH"] = (
    f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
)
FINE_TUNED = [run for run in PLAN.runs if run.fine_tuned]
CONTROLS = [run for run in PLAN.runs if not run.fine_tuned]
# The validate jobs' records (runs that validate and have, or now need, one): computed once.
VALIDATION_RECORDS = validation_records(PLAN)


def _alternatives(names):
    return "|".join(re.escape(name) for name in names) or "(?!)"


# Snakemake copies a constraint into every file pattern and rescans that text for each job: an
# alternation of 1,000 run names made planning twice as slow. A run is one path component
# (run_plan() names the runs that exist); only controls, a few per experiment, are listed.
CONTROL_DIRS = _alternatives(run.run_dir for run in CONTROLS)


wildcard_constraints:
    run=r"[^/]+",


def per_job(func):
    """Mark a function Snakemake calls for every job (input, params, resources, threads).

    Snakemake inspects such a function's signature at each call, 2-3 times per job: a third of
    the cost of the calls themselves in a 1,000-run plan. Hand it the signature once.
    """
    overwrite_function_params(func, inspect.signature(func).parameters)
    return func


def run_plan(wildcards):
    try:
        return PLAN.run(wildcards.run)
    except KeyError:
        raise WorkflowError(
            f"{wildcards.run!r} is not a run directory of {PLAN.experiment.path}"
        ) from None


@per_job
def get_scaffold_payload(wildcards):
    return scaffold_payload(run_plan(wildcards))


@per_job
def get_tune_command(wildcards):
    return shlex.join(
        tune_command(run_plan(wildcards).setup, Path(wildcards.run) / "finetune.yaml")
    )


_FORCED_RERUN_NOTED = []


def note_forced_rerun():
    """Say once which finished results a forced rerun (-F/-R/-f) redoes: the force flags are
    known only while the DAG is built, so the job input functions call this."""
    if _FORCED_RERUN_NOTED or workflow.exec_mode != ExecMode.DEFAULT:
        return
    _FORCED_RERUN_NOTED.append(True)
    settings = workflow.dag_settings
    for note in forced_rerun_notes(
        PLAN,
        settings.forceall,
        set(settings.forcerun),
        settings.forcetargets,
        set(settings.targets),
    ):
        logger.warning(f"snaketune: {note}")


_RERUN_NOTES = Counter()


def rerun_edge(path, output, why):
    """The edge from a job's rendered file, given why the job's existing result is outdated.

    The job's own state files decide (the manifest, the sidecars: snaketune.state), never
    mtimes: a crash can leave a result newer than its inputs yet made with other settings. An
    outdated result is forced (Snakemake cannot see why: it reads no JSON) and keeps a plain
    edge, because Snakemake 9 skips every check of a job downstream of a rerunning job and an
    ancient() edge then stops the rerun from reaching it; a current one gets an ancient()
    edge, so that a re-rendered file (a summary edit, a policy key) reruns nothing. A job whose
    result is missing runs anyway and keeps a plain edge too: behind a job Snakemake reruns on
    its own (an incomplete scaffold after a kill), an ancient() edge would hide it.
    """
    if why is None:
        return ancient(path) if os.path.exists(output) else path
    if workflow.exec_mode == ExecMode.DEFAULT and output not in workflow.dag.forcefiles:
        workflow.dag.forcefiles.add(output)
        _RERUN_NOTES[why] += 1
        if _RERUN_NOTES[why] <= 3:
            logger.info(f"snaketune: redo {output}: {why}")
        elif _RERUN_NOTES[why] == 4:
            logger.info(
                f"snaketune: (more results to redo because {why} are not listed)"
            )
    return path


@per_job
def get_finetune_input(wildcards):
    note_forced_rerun()
    run = run_plan(wildcards)
    manifest = f"{wildcards.run}/finetune_manifest.json"
    why = training_rerun_reason(PLAN, run)
    return {"config": rerun_edge(f"{wildcards.run}/finetune.yaml", manifest, why)}


@per_job
def get_evaluate_input(wildcards):
    """The run's evaluation job redoes what is missing or outdated; the dry run says which."""
    note_forced_rerun()
    run = run_plan(wildcards)
    record = f"{wildcards.run}/eval/evaluations.json"
    # without its record the job runs anyway (a missing output), and does every pair
    reasons = [
        f"{e.task}/{e.checkpoint} ({why})"
        for e in run.evaluations
        if (PLAN.directory / record).exists()
        and (why := evaluation_rerun_reason(PLAN, run, e.task, e.checkpoint))
    ]
    why = "; ".join(reasons) or None
    inputs = {"setup": rerun_edge(f"{wildcards.run}/setup_finetune.yaml", record, why)}
    if run.fine_tuned:
        inputs["manifest"] = rerun_edge(
            f"{wildcards.run}/finetune_manifest.json", record, why
        )
    validation = f"{wildcards.run}/validation_losses.json"
    if any(e.checkpoint == "best" for e in run.evaluations) and (
        validation in VALIDATION_RECORDS
    ):
        # the best epoch is decided once every epoch has its validation loss (a stable input:
        # ancient once the record is current)
        needed = validation_rerun_reason(PLAN, run)
        inputs["validation"] = validation if needed else ancient(validation)
    return inputs


@per_job
def get_validate_input(wildcards):
    run = run_plan(wildcards)
    record = f"{wildcards.run}/validation_losses.json"
    why = validation_rerun_reason(PLAN, run)
    return {
        "config": ancient(f"{wildcards.run}/finetune.yaml"),
        "manifest": rerun_edge(f"{wildcards.run}/finetune_manifest.json", record, why),
    }


def get_resources(stage):
    """Snakemake resources of a stage (slurm plugin names) from config, per run."""

    def resource(name):
        @per_job
        def lookup(wildcards):
            value = run_plan(wildcards).setup["resources"][stage][name]
            return (
                int(value) if name in ("gpus", "cpus", "mem_mb", "time") else str(value)
            )

        return lookup

    resources = {
        "runtime": resource("time"),
        "mem_mb": resource("mem_mb"),
        "cpus_per_task": resource("cpus"),
        "gpu": resource("gpus"),
    }
    for name, slurm_name in (
        ("partition", "slurm_partition"),
        ("account", "slurm_account"),
        ("constraint", "constraint"),
        ("qos", "qos"),
    ):
        if any(run.setup["resources"][stage][name] for run in PLAN.runs):
            resources[slurm_name] = resource(name)
    return resources


def get_threads(stage):
    return per_job(
        lambda wildcards: int(run_plan(wildcards).setup["resources"][stage]["cpus"])
    )


def evaluation_records():
    """Each evaluated run's record of its evaluation job."""
    return [
        f"{run.run_dir}/eval/evaluations.json" for run in PLAN.runs if run.evaluations
    ]


def evaluation_logs():
    """Every planned evaluation log (what the report reads)."""
    return [
        f"{run.run_dir}/eval/logs/{e.task}_{e.checkpoint}.eval"
        for run in PLAN.runs
        for e in run.evaluations
    ]


def get_scaffold_files(wildcards):
    """Every rendered file (an input function: listed only when `scaffold` is asked for)."""
    files = []
    for run in PLAN.runs:
        files.append(f"{run.run_dir}/setup_finetune.yaml")
        if run.fine_tuned:
            files += [f"{run.run_dir}/finetune.yaml", f"{run.run_dir}/finetune.slurm"]
    return files


def get_final_output():
    if PLAN.experiment.tasks:
        return ["results/results.csv"]
    return [f"{run.run_dir}/finetune_manifest.json" for run in FINE_TUNED] + (
        VALIDATION_RECORDS
    )


def get_report_trainings():
    """Every fine-tuned run's manifest: the report plots each run's training loss, also of
    runs that no task evaluates."""
    return [f"{run.run_dir}/finetune_manifest.json" for run in FINE_TUNED]


def get_report_validations():
    """The validation losses of epochs trained without validation (the report shows them)."""
    return VALIDATION_RECORDS
