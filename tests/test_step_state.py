"""Step states: written so that a kill never leaves a torn one, chosen only when they are the
newest state a training can continue from, and summed up per attempt for `snaketune status`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from snaketune import step_state
from snaketune.finetune import fingerprint, history, newest_state, resume_point
from snaketune.state import RECIPE_RNG_KEY, training_digest

GEOMETRY = {"batch_size": 8, "gradient_accumulation_steps": 1, "steps_per_epoch": 5}


def state(step: int, epoch: int, **geometry) -> dict:
    """A step state's scalars (and one tensor standing for the adapter)."""
    made = {**GEOMETRY, **geometry}
    return {
        "format": step_state.FORMAT,
        step_state.GLOBAL_STEP: step,
        step_state.EPOCH: epoch,
        step_state.BATCHES: (step - epoch * made["steps_per_epoch"]) * made["gradient_accumulation_steps"],
        step_state.STEPS_PER_EPOCH: made["steps_per_epoch"],
        step_state.BATCH_SIZE: made["batch_size"],
        step_state.ACCUMULATION: made["gradient_accumulation_steps"],
        step_state.SAVED_AT: 1_700_000_000.0 + step,
        "adapter": torch.full((64, 64), float(step)),
    }


def save_epoch(output_dir, epoch: int, epochs_run: int | None = None) -> None:
    folder = output_dir / f"epoch_{epoch}"
    folder.mkdir(parents=True)
    for name in ("config.json", "adapter_config.json", "adapter_model.safetensors", "model.safetensors"):
        (folder / name).write_text("{}")
    if epochs_run is not None:
        (output_dir / "recipe_state").mkdir(exist_ok=True)
        torch.save(
            {"epochs_run": epochs_run, "max_steps_per_epoch": 5, RECIPE_RNG_KEY: {}}, output_dir / "recipe_state" / "recipe_state.pt"
        )


WRITER = """
import sys, torch
from pathlib import Path
from snaketune import step_state
step_state.write(Path(sys.argv[1]), {"format": 1, "global_step": 9, "epoch": 1, "batches": 4, "steps_per_epoch": 5,
                 "saved_at": 0.0, "adapter": torch.zeros(256, 256)})
"""


def test_a_kill_during_the_save_leaves_the_previous_state_usable(tmp_path):
    path = tmp_path / step_state.STEP_STATE
    step_state.write(path, state(7, 1))
    # a child killed (SIGKILL, its whole process group) with the new state written but not renamed
    env = dict(os.environ, SNAKETUNE_FAULT="recipe:step-state-written")
    child = subprocess.run([sys.executable, "-c", WRITER, str(path)], env=env, capture_output=True, start_new_session=True)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    assert path.with_name(f".{path.name}.tmp").is_file()  # its state, never renamed into place
    assert torch.equal(step_state.read(path)["adapter"], torch.full((64, 64), 7.0))
    assert step_state.record(tmp_path)["global_step"] == 7
    # a half-written temporary (a kill inside torch.save) changes nothing either
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(tmp.read_bytes()[: tmp.stat().st_size // 2])
    assert step_state.describe(path)[step_state.GLOBAL_STEP] == 7
    # the next save replaces both
    step_state.write(path, state(8, 1))
    assert step_state.read(path)[step_state.GLOBAL_STEP] == 8 and not tmp.exists()
    assert json.loads((tmp_path / step_state.RECORD).read_text())["bytes"] == path.stat().st_size


def test_an_unreadable_step_state_is_not_resumed_from(tmp_path):
    (tmp_path / step_state.STEP_STATE).write_bytes(b"PK\x03\x04 torn")
    assert step_state.read(tmp_path / step_state.STEP_STATE) is None
    assert newest_state(tmp_path, 3, GEOMETRY) == (None, False, "")


def test_a_step_state_in_the_first_epoch_is_resumed_from(tmp_path):
    step_state.write(tmp_path / step_state.STEP_STATE, state(3, 0))
    resume, stale, why = newest_state(tmp_path, 3, GEOMETRY)
    assert (resume["resumed_from"], resume["epoch"], resume["step"], resume["override"]) == (
        "step_state",
        0,
        3,
        "resume_from_step_state=True",
    )
    assert not stale and not why


def test_the_newer_of_epoch_checkpoint_and_step_state_wins(tmp_path):
    save_epoch(tmp_path, 0, epochs_run=1)
    step_state.write(tmp_path / step_state.STEP_STATE, state(7, 1))
    (tmp_path / "epoch_1").mkdir()  # a save of epoch 1 killed half-way
    resume = resume_point(tmp_path, 3, GEOMETRY)
    assert (resume["resumed_from"], resume["epoch"], resume["step"]) == ("step_state", 1, 7)
    assert not (tmp_path / "epoch_1").exists() and list(tmp_path.glob(".incomplete-epoch_1-*"))
    # killed after epoch 1 was saved, before its step state was removed: the epoch wins
    save_epoch(tmp_path, 1, epochs_run=2)
    resume = resume_point(tmp_path, 3, GEOMETRY)
    assert (resume["resumed_from"], resume["epoch"], resume["step"]) == (1, 2, 10)
    assert not (tmp_path / step_state.STEP_STATE).exists() and not (tmp_path / step_state.RECORD).exists()


def test_a_step_state_of_another_batch_geometry_is_not_resumed_from(tmp_path):
    save_epoch(tmp_path, 0, epochs_run=1)
    step_state.write(tmp_path / step_state.STEP_STATE, state(7, 1))
    # an out-of-memory relaunch: half the batch, twice the accumulation
    halved = {"batch_size": 4, "gradient_accumulation_steps": 2, "steps_per_epoch": 5}
    resume, stale, why = newest_state(tmp_path, 3, halved)
    assert resume["resumed_from"] == 0 and not stale and "batch_size" in why
    assert (tmp_path / step_state.STEP_STATE).exists()  # still the one the original batch resumes from


def test_a_step_state_after_an_incomplete_epoch_is_not_resumed_from(tmp_path):
    step_state.write(tmp_path / step_state.STEP_STATE, state(7, 1))  # epoch_0 is missing
    resume, _, why = newest_state(tmp_path, 3, GEOMETRY)
    assert resume is None and "before it" in why


ATTEMPTS = [
    # fresh; a step state at 6, SIGKILLed at step 9 (its end filled in by the next attempt)
    {"started": "2025-01-01 10:00:00", "slurm_job": "41", "resumed_from": None, "resumed_step": None},
    # resumed at 6; preempted (SIGTERM) after saving step 12 on the way out: nothing lost
    {"started": "2025-01-01 10:05:00", "slurm_job": "42", "resumed_from": "step_state", "resumed_step": 6, "resumed_epoch": 1},
    # SLURM started job 42 again; it saved step 20 and requeued itself before the time limit
    {"started": "2025-01-01 10:20:00", "slurm_job": "42", "resumed_from": "step_state", "resumed_step": 12, "resumed_epoch": 2},
    # then twice killed before saving anything
    {"started": "2025-01-01 11:00:00", "slurm_job": "42", "resumed_from": "step_state", "resumed_step": 20, "resumed_epoch": 4},
    {"started": "2025-01-01 11:10:00", "slurm_job": "43", "resumed_from": "step_state", "resumed_step": 20, "resumed_epoch": 4},
    {"started": "2025-01-01 11:20:00", "slurm_job": "43", "resumed_from": "step_state", "resumed_step": 20, "resumed_epoch": 4},
]
ENDS = [
    {"ended": "2025-01-01 10:04:00", "exit_code": None, "stopped_by": "killed", "reached_step": 9, "saved_step": 6, "saved_at": "2025-01-01 10:03:00"},
    {"ended": "2025-01-01 10:19:00", "exit_code": 143, "stopped_by": "SIGTERM", "reached_step": 12, "saved_step": 12, "saved_at": "2025-01-01 10:19:00"},
    {"ended": "2025-01-01 10:59:00", "exit_code": 143, "stopped_by": "the SLURM time limit", "reached_step": 20, "saved_step": 20,
     "saved_at": "2025-01-01 10:58:30", "requeued": True},
    {"ended": "2025-01-01 11:09:00", "exit_code": None, "stopped_by": "killed", "reached_step": 23, "saved_step": 20, "saved_at": "2025-01-01 10:58:30"},
    {"ended": "2025-01-01 11:19:00", "exit_code": None, "stopped_by": "killed", "reached_step": 22, "saved_step": 20, "saved_at": "2025-01-01 10:58:30"},
]  # fmt: skip


def test_the_history_of_a_training_says_what_each_interruption_lost():
    attempts = [{**attempt, **end} for attempt, end in zip(ATTEMPTS, [*ENDS, {}], strict=True)]
    seen = history(attempts)
    assert seen["resumed"] == "resumed at step 20 of epoch 5 (attempt 6)"
    assert (seen["requeues"], seen["own_requeues"]) == (3, 1)  # 42 started thrice, 43 twice; one by snaketune
    lost = [(i["attempt"], i["by"], i["steps_lost"], i["seconds_lost"]) for i in seen["interruptions"]]
    assert lost == [
        (1, "killed", 3, 60.0),  # steps 7-9, the minute since the state at step 6
        (2, "SIGTERM", 0, 0.0),
        (3, "the SLURM time limit", 0, 30.0),
        (4, "killed", 3, 540.0),  # saved nothing: all of its 9 minutes
        (5, "killed", 2, 540.0),
    ]
    assert seen["unsaved_streak"] == 2
    # a fresh start begins another training: the earlier attempts are not its history
    restarted = history([*attempts[:5], {"started": "2025-01-02 09:00:00", "resumed_from": None}])
    assert restarted["interruptions"] == [] and restarted["resumed"] == "" and restarted["requeues"] == 0


SUMMARY = """# Experiment: policy

## All Runs
| Run Name | Model | LoRA Rank | Learning Rate | Type |
|---|---|---|---|---|
| only | Llama-3.2-1B-Instruct | 8 | 1e-3 | Fine-tuned |

## Resources

### Models
- **Llama-3.2-1B-Instruct**: `/cluster/models/Llama-3.2-1B-Instruct`

### Dataset
- **Path:** `/cluster/data/words.json`

## Configuration
- **Recipe:** lora_finetune_single_device
- **Epochs:** 1
"""


@pytest.mark.parametrize("key", ["save_every_steps", "save_every_minutes", "requeue_margin_minutes", "max_requeues"])
def test_interruption_settings_are_policy(key, tmp_path):
    from snaketune.parse import read_summary
    from snaketune.plan import plan_experiment
    from snaketune.render import finetune_config
    from snaketune.workflow import workflow_config

    summary = tmp_path / "experiment_summary.md"
    summary.write_text(SUMMARY)
    config = workflow_config()
    changed = {**config, "training": {**config["training"], key: config["training"][key] + 1}}
    (before,) = plan_experiment(read_summary(summary), config, {}).runs
    (after,) = plan_experiment(read_summary(summary), changed, {}).runs
    assert after.setup["training"][key] != before.setup["training"][key]
    assert training_digest(after.setup) == training_digest(before.setup)  # never retrains a finished run
    rendered_before, rendered_after = finetune_config(before.setup), finetune_config(after.setup)
    assert rendered_after[key] != rendered_before[key]  # the recipe and the job read it there
    assert fingerprint(rendered_after) == fingerprint(rendered_before)  # still resumes a started one
