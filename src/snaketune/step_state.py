"""The step state: a mid-epoch save of a single-device training, so an interruption loses
minutes instead of an epoch.

``<checkpoints>/step_state.pt`` (beside torchtune's ``recipe_state/``) holds everything the
training needs to continue after optimizer step ``global_step`` exactly as if it had never
stopped: the adapter, the optimizer, the learning-rate schedule, the dataloader's position in
the epoch's permutation, the RNG states, and the batch geometry it was made with. It is
self-contained (the base model comes from the model directory as on a fresh start), so a
training resumes from it even in its first epoch, where torchtune has nothing to resume from.

Written by ``snaketune/resumable_recipe.py`` every ``training.save_every_steps`` steps and/or
``save_every_minutes`` minutes and when the training is told to stop (SIGTERM/SIGINT), always
via a temporary file, fsync and rename: a kill at any moment leaves the previous state (or
none), never a torn one. Only the latest is kept; it is removed once the epoch checkpoint that
contains it is complete. ``snaketune.finetune`` decides which saved state a new attempt
continues from (the newest of the epoch checkpoints and this one), reading the state itself;
``step_state.json``, written after each save, tells readers without torch (``snaketune
status``) where it stands, when it was saved, its size and how long the save took.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from snaketune import faults
from snaketune.state import read_record, write_record

STEP_STATE = "step_state.pt"
RECORD = "step_state.json"
FORMAT = 1
# The keys of a step state besides the tensors (adapter, optimizer, scheduler, dataloader, RNG).
GLOBAL_STEP, EPOCH, BATCHES = "global_step", "epoch", "batches"
STEPS_PER_EPOCH, BATCH_SIZE, ACCUMULATION = "steps_per_epoch", "batch_size", "gradient_accumulation_steps"
SAMPLER_SEED, SAVED_AT, LR_SCHEDULER = "sampler_seed", "saved_at", "lr_scheduler"


def write(path: Path, state: dict, run_dir: str = "") -> int:
    """Replace the step state at ``path`` by ``state`` (tmp -> fsync -> rename), then its
    record; returns its size in bytes."""
    import torch

    started = time.perf_counter()
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    faults.reached("recipe:step-state-written", run_dir)
    os.replace(tmp, path)
    # the rename itself is durable only once the directory is synced
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    size = path.stat().st_size
    keys = (GLOBAL_STEP, EPOCH, BATCHES, STEPS_PER_EPOCH, SAVED_AT)
    write_record(path.with_name(RECORD), {**{key: state[key] for key in keys}, "bytes": size, "seconds": time.perf_counter() - started})
    return size


def record(output_dir: Path) -> dict | None:
    """The record of the step state in a checkpoint directory, when there is one."""
    return read_record(output_dir / RECORD) if (output_dir / STEP_STATE).is_file() else None


def read(path: Path, device: str = "cpu") -> dict | None:
    """The step state at ``path``, or None when there is none or it cannot be read."""
    if not path.is_file():
        return None
    import torch

    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # any unreadable file means: cannot resume from it
        print(f"snaketune: {path} is unreadable ({type(error).__name__}); it cannot be resumed from", flush=True)
        return None
    return state if isinstance(state, dict) and state.get("format") == FORMAT else None


def describe(path: Path) -> dict | None:
    """The step state's position and geometry (no tensors), read without loading its tensors."""
    if not path.is_file():
        return None
    import torch

    try:
        # mmap: only the few scalars below are touched, not the adapter and optimizer tensors
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        return None
    keys = (GLOBAL_STEP, EPOCH, BATCHES, STEPS_PER_EPOCH, BATCH_SIZE, ACCUMULATION, SAVED_AT)
    return {key: state[key] for key in keys}


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_name(f".{path.name}.tmp").unlink(missing_ok=True)
    path.with_name(RECORD).unlink(missing_ok=True)
