"""What a run's validation losses say: its best epoch and whether it overfits.

Light on purpose (no pandas, no torch): the report, ``snaketune status`` and the evaluation job
(the ``best`` checkpoint) read the same per-epoch losses, ``{"epoch_N": {"train_loss",
"val_loss"}}`` (the manifest's ``losses``, or the recipe's ``snaketune_losses.json`` while the
run trains), completed by the validate job's record for epochs trained without validation
(:func:`run_losses`).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

from snaketune.state import MANIFEST, VALIDATION_RECORD, read_record

# A run overfits when its validation loss rose this many epochs in a row.
OVERFITTING_RISES = 2


def val_losses(losses: dict | None) -> dict[int, float]:
    """Epoch -> validation loss, for the epochs that have a finite one, in epoch order."""
    found = {}
    for key, entry in (losses or {}).items():
        if not key.startswith("epoch_") or not key.removeprefix("epoch_").isdigit() or not isinstance(entry, dict):
            continue
        value = entry.get("val_loss")
        if isinstance(value, int | float) and math.isfinite(value):
            found[int(key.removeprefix("epoch_"))] = float(value)
    return dict(sorted(found.items()))


def best_epoch(losses: dict | None) -> int | None:
    """The epoch with the lowest validation loss (the earliest on a tie), or None without any."""
    values = val_losses(losses)
    return min(values, key=lambda epoch: (values[epoch], epoch)) if values else None


def overfitting(losses: dict | None, rises: int = OVERFITTING_RISES) -> tuple[int, int] | None:
    """``(first epoch, last epoch)`` of the first stretch in which the validation loss rose
    ``rises`` or more epochs in a row (over consecutive validated epochs), or None."""
    values = list(val_losses(losses).items())
    start, streak = None, 0
    for (before_epoch, before), (epoch, value) in zip(values, values[1:], strict=False):
        if epoch == before_epoch + 1 and value > before:
            start = before_epoch if streak == 0 else start
            streak += 1
            continue
        if streak >= rises:
            return start, before_epoch
        streak = 0
    if streak >= rises:
        return start, values[-1][0]
    return None


def overfitting_note(losses: dict | None) -> str:
    """The flag's text, or "" when the run does not overfit."""
    found = overfitting(losses)
    if found is None:
        return ""
    values = val_losses(losses)
    first, last = found
    return f"overfitting: validation loss rose {last - first} epochs in a row (epoch {first} {values[first]:.4g} -> epoch {last} {values[last]:.4g})"


def best_outdated(sidecar: dict | None, losses: dict | None) -> str | None:
    """Why a ``best`` evaluation evaluated another epoch than the run's best now (``losses``:
    its per-epoch losses, :func:`run_losses`), or None."""
    epoch = best_epoch(losses)
    if sidecar is not None and epoch is not None and sidecar.get("epoch") != epoch:
        return f"the best epoch by validation loss is now epoch {epoch}, it evaluated epoch {sidecar.get('epoch')}"
    return None


def merged_losses(manifest: dict | None, record: dict | None) -> dict:
    """The manifest's per-epoch losses, each missing validation loss taken from the validate
    job's record when that record was made for this manifest's training (digest, fingerprint)."""
    manifest = manifest or {}
    losses = copy.deepcopy(manifest.get("losses") or {})
    if record and all(record.get(key) == manifest.get(key) for key in ("training_digest", "fingerprint")):
        for key, value in (record.get("val_losses") or {}).items():
            entry = losses.setdefault(key, {"train_loss": None, "val_loss": None})
            if entry.get("val_loss") is None:
                entry["val_loss"] = value
    return losses


def run_losses(run_dir: Path, manifest: dict | None = None) -> dict:
    """A trained run's per-epoch losses (manifest plus the validate job's record)."""
    manifest = read_record(run_dir / MANIFEST) if manifest is None else manifest
    return merged_losses(manifest, read_record(run_dir / VALIDATION_RECORD))


def unvalidated_epochs(manifest: dict | None, record: dict | None = None) -> list[int]:
    """The epochs of a finished training that have no validation loss (yet)."""
    losses = merged_losses(manifest, record)
    epochs = [int(key.removeprefix("epoch_")) for key in (manifest or {}).get("epochs", {})]
    validated = val_losses(losses)
    return sorted(epoch for epoch in epochs if epoch not in validated)
