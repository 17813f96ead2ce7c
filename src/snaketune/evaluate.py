"""The evaluate job: one inspect-ai task on one checkpoint, into a deterministic ``.eval`` log.

inspect names its logs by time; the job writes into a private folder and renames the one
log to ``<run_dir>/eval/logs/<task>_<checkpoint>.eval`` only when the evaluation succeeded,
so a failed or killed job never leaves a log that looks like a result. A log already there
(a forced rerun, or one made with settings that changed since) is moved into
``eval/logs/superseded-<time>-…/`` then, never overwritten: the rule marks its output
``update()`` so that Snakemake does not delete it first.

After the log, the job writes its sidecar ``<task>_<checkpoint>.eval.json`` (snaketune.state):
the digests of the evaluation settings and of the training it evaluated, the checkpoint, the
status. The previous log's sidecar is removed before the new log is renamed into place, so a
log is never paired with another log's record; a failed evaluation records its error.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from snaketune import faults
from snaketune.plan import BUILTIN_TASK
from snaketune.scaffold import keep_aside
from snaketune.state import MANIFEST, SUCCESS, evaluation_digest, read_record, sidecar_path, write_record

BUILTIN_TASK_FILE = Path(__file__).parent / "tasks" / "exact_match.py"


class EvaluateError(RuntimeError):
    pass


def checkpoint_path(setup: dict, checkpoint: str, manifest: dict | None) -> Path:
    """The model directory evaluated: the base model for ``base``, else the epoch checkpoint
    the run's manifest lists."""
    if checkpoint == "base":
        return Path(setup["model_path"])
    if manifest is None or checkpoint not in manifest.get("epochs", {}):
        raise EvaluateError(f"the run's {MANIFEST} lists no {checkpoint} (has the run trained?)")
    return Path(manifest["epochs"][checkpoint])


def task_file(setup: dict, task: str) -> Path:
    script = setup["evaluation"]["tasks"][task]["script"]
    return BUILTIN_TASK_FILE if script == BUILTIN_TASK else Path(script)


def run(setup_path: Path, task: str, checkpoint: str, out: Path) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    setup_path = setup_path.absolute()
    setup = yaml.safe_load(setup_path.read_text())
    manifest = read_record(setup_path.parent / MANIFEST) if setup["type"] == "fine-tuned" else None
    record = {
        "task": task,
        "checkpoint": checkpoint,
        "evaluation_digest": evaluation_digest(setup, task),
        "training_digest": manifest.get("training_digest") if manifest else None,
    }
    try:
        model_dir = checkpoint_path(setup, checkpoint, manifest)
        record["model_path"] = str(model_dir)
        _evaluate(setup, setup_path, task, checkpoint, model_dir, out)
    except Exception as error:
        # the log in place (if any) stays; this record makes it outdated, so the next run redoes it
        write_record(sidecar_path(out), {**record, "status": "error", "error": f"{type(error).__name__}: {error}"[:2000]})
        raise
    write_record(sidecar_path(out), {**record, "status": SUCCESS, "error": None, "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    faults.reached("evaluate:after-sidecar", setup["run_dir"])


def _evaluate(setup: dict, setup_path: Path, task: str, checkpoint: str, model_dir: Path, out: Path) -> None:
    script = task_file(setup, task)
    missing = [str(path) for path in (model_dir, script) if not path.exists()]
    if missing:
        raise EvaluateError("missing on this machine: " + ", ".join(missing))
    evaluation = setup["evaluation"]
    import torch
    from inspect_ai import eval as inspect_eval

    from snaketune.prompts import hf_model_args

    gpus = int(setup["resources"]["evaluate"]["gpus"])
    device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
    sampling = {"temperature": evaluation["temperature"]} if evaluation["temperature"] > 0 else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", dir=out.parent))
    try:
        logs = inspect_eval(
            os.path.relpath(script),  # inspect treats a task path as a glob: absolute ones fail
            model="hf/local",
            # hf_model_args: the chat template and tokenizer call that give the prompts training had
            model_args={"model_path": str(model_dir), "device": device, "do_sample": evaluation["temperature"] > 0, **hf_model_args(setup)},
            task_args={"config_path": str(setup_path)},
            log_dir=str(scratch),
            log_format="eval",
            max_tokens=evaluation["max_tokens"],
            display="plain",
            **sampling,
        )
        log = logs[0]
        if log.status != "success":
            message = log.error.message if log.error else log.status
            raise EvaluateError(f"inspect eval of {task} on {checkpoint} ended {log.status}: {message}")
        produced = list(scratch.glob("*.eval"))
        if len(produced) != 1:
            raise EvaluateError(f"expected one .eval log in {scratch}, found {len(produced)}")
        previous = sidecar_path(out)
        if out.exists():
            kept = keep_aside(out)
            if previous.exists():
                previous.rename(sidecar_path(kept))
            print(f"snaketune: kept the previous result as {kept}", flush=True)
        previous.unlink(missing_ok=True)
        os.replace(produced[0], out)
        faults.reached("evaluate:after-log", setup["run_dir"])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
