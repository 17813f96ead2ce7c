"""What decides that a training or an evaluation is current.

The record that says an output is current is written by the job that made the output, after
the output itself, atomically (DESIGN.md, "State files"):
- ``<run>/finetune_manifest.json``, written last by the finetune job: ``training_digest``, the
  digest of the training settings it trained with (beside the checkpoint fingerprint, the batch
  size actually used, its attempts and whether every resume was exact);
- ``<run>/eval/logs/<task>_<checkpoint>.eval.json`` (the sidecar), written by the evaluation
  after its ``.eval`` log is renamed into place: ``evaluation_digest``, the ``training_digest`` of
  the manifest it evaluated, the checkpoint it resolved to, ``status`` and ``error``.
A crash between an output and its record errs towards redoing the work. At DAG-build time the
workflow compares these small JSON files with the plan's digests (:func:`training_outdated`,
:func:`evaluation_outdated`); it never opens an ``.eval`` zip.

Policy keys change how a job runs, not what it computes (logging interval, validation on/off,
W&B): they stay out of every digest, so changing them never retrains or re-evaluates.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from snaketune.render import INTERRUPTION_KEYS, VALIDATION_KEYS, write_atomic

MANIFEST = "finetune_manifest.json"
# setup["training"] / setup["evaluation"] keys that are policy, not settings of the result
TRAINING_POLICY = (*VALIDATION_KEYS, "log_every_n_steps", *INTERRUPTION_KEYS)
EVALUATION_POLICY = ("tasks", "batch_size")
SUCCESS = "success"
# The key of the generators' states in torchtune's recipe_state.pt (snaketune's recipe saves them).
RECIPE_RNG_KEY = "snaketune_rng_states"
# ...and of the seed of the data order (absent: torchtune's 0, in a state of an older snaketune)
RECIPE_SAMPLER_SEED_KEY = "snaketune_sampler_seed"
# Beside the checkpoints, written by snaketune's recipe at each epoch's end: per epoch its
# token-weighted training loss and its validation loss (None when not validated).
EPOCH_LOSSES = "snaketune_losses.json"
# <run>/validation_losses.json, written by the validate job: the validation losses of epochs
# trained without validation, computed from their checkpoints, for the manifest it read.
VALIDATION_RECORD = "validation_losses.json"


def training_settings(setup: dict) -> dict:
    """What decides a training's result: a change here retrains the run, nothing else does."""
    settings = {key: setup[key] for key in ("model", "model_path", "dataset", "system_prompt", "torchtune")}
    settings["training"] = {key: value for key, value in setup["training"].items() if key not in TRAINING_POLICY}
    return settings


def evaluation_settings(setup: dict, task: str) -> dict:
    """What decides an evaluation's result besides the checkpoint it evaluates."""
    evaluation = {key: value for key, value in setup["evaluation"].items() if key not in EVALUATION_POLICY}
    return {
        "task": task,
        "script": setup["evaluation"]["tasks"][task]["script"],
        "model_path": setup["model_path"],
        "system_prompt": setup["system_prompt"],
        "dataset": setup["dataset"],
        **evaluation,
    }


def digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def training_digest(setup: dict) -> str:
    return digest(training_settings(setup))


def evaluation_digest(setup: dict, task: str) -> str:
    return digest(evaluation_settings(setup, task))


def read_record(path: Path) -> dict | None:
    """A manifest or sidecar, or None when it is missing or unreadable."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_record(path: Path, record: dict) -> None:
    write_atomic(path, json.dumps(record, indent=1) + "\n")


def sidecar_path(log: Path) -> Path:
    """``<task>_<checkpoint>.eval`` -> ``<task>_<checkpoint>.eval.json``."""
    return log.with_name(log.name + ".json")


def training_outdated(manifest: dict | None, wanted: str) -> str | None:
    """Why a finished training (its manifest) no longer counts, or None when it is current."""
    if manifest is None:
        return "its manifest is unreadable"
    recorded = manifest.get("training_digest")
    if recorded is None:
        return "its manifest records no training settings (made by an older snaketune)"
    if recorded != wanted:
        return "it was trained with other training settings"
    return None


def evaluation_outdated(sidecar: dict | None, wanted_evaluation: str, wanted_training: str | None) -> str | None:
    """Why an existing evaluation log no longer counts, or None when it is current.

    ``wanted_training`` is the plan's training digest (None for a control's base model).
    """
    if sidecar is None:
        return "its log has no sidecar record (interrupted before it was recorded, or made by an older snaketune)"
    if sidecar.get("status") != SUCCESS:
        return f"it failed: {sidecar.get('error') or sidecar.get('status')}"
    if sidecar.get("evaluation_digest") != wanted_evaluation:
        return "it was made with other evaluation settings"
    if sidecar.get("training_digest") != wanted_training:
        return "it evaluated a checkpoint trained with other settings"
    return None
