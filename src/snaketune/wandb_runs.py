"""The W&B runs of a training: one offline run per training attempt, known from our own record.

Identity: every attempt of a training (the first one, each resume, each out-of-memory relaunch)
logs its own offline W&B run, with an id the finetune job draws before the attempt starts and
passes as ``WANDB_RUN_ID``. All attempts of a training share its group (the experiment) and name
(the run directory). A single id for all attempts would need W&B to append the second offline
run to the first on sync: offline runs cannot be resumed, each one numbers its history from
step 0, and same-id offline runs have overwritten each other's history on sync (wandb issues
#3841, #5865). Separate runs lose nothing, and the recipe's restored ``global_step`` (torchtune's
x-axis in W&B) lines their curves up.

What is known about each run comes from ``snaketune_attempts.json`` beside the checkpoints (the
run id, project and entity of each attempt, when it started and, written by the job after the
attempt, when it finished and its exit code) and from the files wandb writes itself: the run's
folder ``<checkpoints>/wandb/offline-run-<time>-<id>/`` and the ``run-<id>.wandb.synced``
marker that ``wandb sync`` leaves after an upload. The ``.wandb`` file itself is never read.
"""

from __future__ import annotations

import secrets
import string
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# The metric logger finetune.yaml names when W&B is on (snaketune.render).
LOGGER = "snaketune.metric_logging.DiskAndWandBLogger"
URL = "https://wandb.ai/{entity}/{project}/runs/{run_id}"
# wandb's own id alphabet and length (wandb.sdk.lib.runid.generate_id)
ID_CHARACTERS = string.ascii_lowercase + string.digits
ID_LENGTH = 8
# `snaketune status` states of a training: its job runs (or waits to), it has its manifest
ACTIVE = ("running", "queued")
FINISHED = ("completed", "outdated")


@dataclass
class WandbRun:
    """One attempt's offline W&B run."""

    run_id: str
    attempt: int  # 1-based, in start order
    newest: bool  # the training's latest attempt
    started: str
    finished: str  # when the job saw the attempt end ("" if it never did: killed)
    exit_code: int | None
    directory: str  # the offline run's folder ("" if wandb never started it)
    synced: bool
    url: str  # "" when the entity is not known before the sync


def new_run_id() -> str:
    return "".join(secrets.choice(ID_CHARACTERS) for _ in range(ID_LENGTH))


def attempt_run(config: dict, environment: dict) -> dict | None:
    """The W&B run an attempt of this finetune.yaml will log to (None when W&B is off):
    ``{"run_id", "project", "entity"}``, the entity as wandb will resolve it before the sync
    (the config's, else ``WANDB_ENTITY``; None means the W&B account's default entity)."""
    logger = config.get("metric_logger") or {}
    if logger.get("_component_") != LOGGER:
        return None
    wandb = logger["wandb"]
    return {"run_id": new_run_id(), "project": wandb["project"], "entity": wandb.get("entity") or environment.get("WANDB_ENTITY") or None}


def attempt_environment(environment: dict, run: dict | None) -> dict:
    """The environment of an attempt's ``tune run``: wandb.init takes its run id from it."""
    return environment if run is None else dict(environment, WANDB_RUN_ID=run["run_id"])


def offline_run_directory(output_dir: Path, run_id: str) -> Path | None:
    """The folder wandb made for an offline run of this training (None if it made none)."""
    found = sorted((output_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    return found[-1] if found else None


def is_synced(directory: Path, run_id: str) -> bool:
    """Whether ``wandb sync`` uploaded the run (it leaves this marker after a successful upload)."""
    return (directory / f"run-{run_id}.wandb.synced").exists()


def run_url(run: dict) -> str:
    return URL.format(**run) if run.get("entity") and run.get("project") else ""


def training_runs(output_dir: Path, attempts: list[dict]) -> list[WandbRun]:
    """The W&B runs of a training's attempts (its attempts record's entries), in start order."""
    runs = []
    for number, attempt in enumerate(attempts, start=1):
        wandb = attempt.get("wandb")
        if not wandb:
            continue
        directory = offline_run_directory(output_dir, wandb["run_id"])
        runs.append(
            WandbRun(
                run_id=wandb["run_id"],
                attempt=number,
                newest=number == len(attempts),
                started=attempt.get("started", ""),
                finished=attempt.get("finished", ""),
                exit_code=attempt.get("exit_code"),
                directory=str(directory or ""),
                synced=directory is not None and is_synced(directory, wandb["run_id"]),
                url=run_url(wandb),
            )
        )
    return runs


def zombie(runs: list[WandbRun], training_state: str) -> WandbRun | None:
    """The training's newest offline run if its process died without our finish record and
    nothing trains the run now (uploaded, W&B would show it running, or crashed, with no job
    behind it). ``training_state``: the training's ``snaketune status`` state."""
    newest = runs[-1] if runs else None
    if newest is None or not newest.directory or ended(newest, training_state) or training_state in ACTIVE:
        return None
    return newest


def ended(run: WandbRun, training_state: str) -> bool:
    """Whether the attempt is over for sure: its job recorded its end, a later attempt of the
    training started (the training lock lets one attempt run at a time), or the training finished."""
    return bool(run.finished) or not run.newest or training_state in FINISHED


def runs_to_sync(runs: list[WandbRun], training_state: str) -> list[WandbRun]:
    """The offline runs ``snaketune wandb-sync`` uploads, in start order: every ended, unsynced
    one, none while the training runs or waits in the queue."""
    if training_state in ACTIVE:
        return []
    return [run for run in runs if run.directory and not run.synced and ended(run, training_state)]


def upload(directory: Path) -> None:
    """``wandb sync`` one offline run (the network call: needs internet and ``wandb login``).
    Whether it worked is wandb's marker (:func:`is_synced`), not its exit code."""
    subprocess.run([sys.executable, "-m", "wandb", "sync", str(directory)])
