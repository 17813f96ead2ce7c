"""The validate job: validation losses of epochs a run trained without validation.

Turning validation on never retrains a finished run (it is policy: snaketune.state). For the
epochs its manifest lists without a validation loss, this job computes it from the saved epoch
checkpoints: snaketune's recipe with ``validate_only: True`` loads an epoch as the base model
(LoRA's B starts at zero: the trained model, merged) and computes the same token-weighted loss
over the validation split as the training does (equal up to the rounding of the merge). Each
epoch runs in a scratch folder (its own config, disk log and output), so nothing beside the
checkpoints changes. It writes ``<run>/validation_losses.json`` last, for the manifest it read
(its training digest and fingerprint): :func:`snaketune.validation.run_losses` merges it into
the manifest's losses; another training makes it stale.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from snaketune.render import RESUMABLE_RECIPE, dump_yaml
from snaketune.state import MANIFEST, VALIDATION_RECORD, read_record, write_record
from snaketune.validation import unvalidated_epochs


class ValidateError(RuntimeError):
    pass


def _weight_files(epoch_dir: Path) -> list[str]:
    index = epoch_dir / "model.safetensors.index.json"
    if index.is_file():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return sorted(path.name for path in epoch_dir.glob("*.safetensors") if not path.name.startswith("adapter"))


def epoch_config(config: dict, epoch_dir: Path, scratch: Path) -> dict:
    """The run's finetune.yaml, made to load ``epoch_dir`` and only validate, in ``scratch``."""
    if not config.get("dataset_val"):
        raise ValidateError("finetune.yaml has no dataset_val: is validation during training on for this run?")
    config = json.loads(json.dumps(config))
    config.update(
        output_dir=str(scratch),
        resume_from_checkpoint=False,
        resume_from_step_state=False,
        validation=True,
        validate_only=True,
        validate_output=str(scratch / "validation.json"),
        metric_logger={"_component_": "torchtune.training.metric_logging.DiskLogger", "log_dir": str(scratch / "logs")},
    )
    config["checkpointer"].update(checkpoint_dir=str(epoch_dir), checkpoint_files=_weight_files(epoch_dir), output_dir=str(scratch))
    return config


def validation_losses(run_dir: Path, epochs: list[int], manifest: dict, config: dict) -> dict[str, float]:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", HF_HUB_OFFLINE="1")
    losses = {}
    for epoch in epochs:
        epoch_dir = Path(manifest["epochs"][f"epoch_{epoch}"])
        if not epoch_dir.is_dir():
            raise ValidateError(f"missing on this machine: {epoch_dir}")
        scratch = Path(tempfile.mkdtemp(prefix=f".validate-epoch_{epoch}.", dir=run_dir))
        try:
            path = scratch / "validate.yaml"
            path.write_text(dump_yaml(epoch_config(config, epoch_dir, scratch)))
            command = ["tune", "run", RESUMABLE_RECIPE, "--config", str(path)]
            print("snaketune: " + " ".join(command), flush=True)
            result = subprocess.run(command, env=env)
            if result.returncode != 0:
                raise ValidateError(f"validating epoch_{epoch} failed (tune run exited {result.returncode})")
            losses[f"epoch_{epoch}"] = json.loads((scratch / "validation.json").read_text())["val_loss"]
            print(f"snaketune: epoch_{epoch}: validation loss {losses[f'epoch_{epoch}']:.6g}", flush=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return losses


def run(run_dir: Path) -> dict:
    """Validate the run's unvalidated epochs; writes and returns its record."""
    run_dir = run_dir.absolute()
    manifest = read_record(run_dir / MANIFEST)
    if manifest is None:
        raise ValidateError(f"{run_dir / MANIFEST} is missing or unreadable (has the run trained?)")
    config = yaml.safe_load((run_dir / "finetune.yaml").read_text())
    record = read_record(run_dir / VALIDATION_RECORD)
    current = record if record and all(record.get(k) == manifest.get(k) for k in ("training_digest", "fingerprint")) else None
    todo = unvalidated_epochs(manifest, current)
    print(
        f"snaketune: validating {len(todo)} epoch(s) trained without validation: {', '.join(f'epoch_{e}' for e in todo) or 'none'}",
        flush=True,
    )
    losses = dict((current or {}).get("val_losses") or {})
    losses.update(validation_losses(run_dir, todo, manifest, config))
    record = {
        "training_digest": manifest.get("training_digest"),
        "fingerprint": manifest.get("fingerprint"),
        "val_losses": dict(sorted(losses.items())),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_record(run_dir / VALIDATION_RECORD, record)
    return record
