"""``<experiment>/run-experiment.log``: an append-only account of what each invocation did.

The block format is the one researchers already read (seed 002)::

    [YYYY-MM-DD HH:MM:SS] ACTION: Description
    Details: ...
    Result: ...

Called from the Snakefile's onstart/onsuccess/onerror handlers (never in a dry run: Snakemake
calls no handler then), which also rewrite the summary's ``## Status`` tables when it has that
section.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

from snaketune.plan import ExperimentPlan

LOG_NAME = "run-experiment.log"
_started: dict[str, float] = {}


def append(experiment_dir: Path, action: str, description: str, details: str, result: str) -> None:
    block = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {action}: {description}\nDetails: {details}\nResult: {result}\n\n"
    with open(experiment_dir / LOG_NAME, "a") as log:
        log.write(block)


def workflow_started(plan: ExperimentPlan, jobs: dict[str, int], executor: str) -> None:
    _started["time"] = time.monotonic()
    fine_tuned = sum(run.fine_tuned for run in plan.runs)
    evaluations = sum(len(run.evaluations) for run in plan.runs)
    planned = ", ".join(f"{rule} {count}" for rule, count in jobs.items()) or "none"
    append(
        plan.directory,
        "START_WORKFLOW",
        f"snakemake started ({executor})",
        f"{shlex.join(sys.argv)}\nExperiment: {plan.experiment.path} ({fine_tuned} fine-tuned runs, "
        f"{len(plan.runs) - fine_tuned} controls, {evaluations} evaluations)\nJobs to run: {planned}",
        "started",
    )


def workflow_ended(plan: ExperimentPlan, success: bool) -> None:
    try:
        _record_end(plan, success)
    except Exception as error:  # bookkeeping must never hide or change the workflow's outcome
        print(f"snaketune: could not update {LOG_NAME} / the Status tables: {type(error).__name__}: {error}", file=sys.stderr)


def _record_end(plan: ExperimentPlan, success: bool) -> None:
    from snaketune import status

    tables = status.has_status_section(plan.experiment.path)
    found = status.collect(plan, scores=tables)
    minutes = (time.monotonic() - _started.get("time", time.monotonic())) / 60
    failures = [
        f"{run.run}: {run.state} ({run.cause}; resumable: {run.resumable})" for run in found.runs if run.state in status.FAILED_STATES
    ] + [
        f"{e.run} {e.task}/{e.checkpoint}: {e.state} ({e.cause})"
        for run in found.runs
        for e in run.evaluations
        if e.state in status.FAILED_STATES
    ]
    flags = [f"{run.run}: {flag}" for run in found.runs for flag in run.flags]
    if failures:  # a failed evaluation does not fail its job (the other pairs stand): say it here
        print(
            f"snaketune: {len(failures)} failure(s); the next run redoes them (details: snaketune status {plan.directory}):"
            + "".join(f"\n  {line}" for line in failures),
            file=sys.stderr,
        )
    details = status.totals_line(found) + "".join(f"\n- {line}" for line in failures + flags)
    results = plan.directory / "results" / "results.csv"
    result = f"{'success' if success else 'FAILED'} after {minutes:.1f} min" + (f"; results: {results}" if results.is_file() else "")
    if not success:
        result += f"; see `snaketune status {plan.directory}`"
    append(
        plan.directory,
        "COMPLETE" if success else "FAILED",
        "workflow finished" if success else "workflow stopped with failures",
        details,
        result,
    )
    if tables:
        status.write_status_tables(plan.experiment.path, found)
        append(plan.directory, "UPDATE_STATUS", "rewrote the Status tables", str(plan.experiment.path), "done")
