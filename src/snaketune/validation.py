"""What a run's validation losses say: its best epoch and whether it overfits.

Light on purpose (no pandas, no torch): the report, ``snaketune status`` and the evaluation job
(the ``best`` checkpoint) read the same per-epoch losses, ``{"epoch_N": {"train_loss",
"val_loss"}}`` (the manifest's ``losses``, or the recipe's ``snaketune_losses.json`` while the
run trains).
"""

from __future__ import annotations

import math

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


def best_outdated(sidecar: dict | None, manifest: dict | None) -> str | None:
    """Why a ``best`` evaluation evaluated another epoch than the manifest's best, or None."""
    epoch = best_epoch((manifest or {}).get("losses"))
    if sidecar is not None and epoch is not None and sidecar.get("epoch") != epoch:
        return f"the best epoch by validation loss is now epoch {epoch}, it evaluated epoch {sidecar.get('epoch')}"
    return None
