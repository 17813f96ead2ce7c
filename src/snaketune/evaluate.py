"""The evaluate job: one inspect-ai task on one checkpoint, into a deterministic ``.eval`` log.

inspect names its logs by time; the job writes into a private folder and renames the one
log to ``<run_dir>/eval/logs/<task>_<checkpoint>.eval`` only when the evaluation succeeded,
so a failed or killed job never leaves a log that looks like a result. A log already there
(a forced rerun, or one made with settings that changed since) is moved into
``eval/logs/superseded-<time>-…/`` then, never overwritten: the rule marks its output
``update()`` so that Snakemake does not delete it first.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import yaml

from snaketune.plan import BUILTIN_TASK
from snaketune.scaffold import keep_aside

BUILTIN_TASK_FILE = Path(__file__).parent / "tasks" / "exact_match.py"


class EvaluateError(RuntimeError):
    pass


def checkpoint_path(setup: dict, checkpoint: str) -> Path:
    """The model directory evaluated: the base model for ``base``, else an epoch checkpoint."""
    if checkpoint == "base":
        return Path(setup["model_path"])
    return Path(setup["training"]["output_dir"]) / checkpoint


def task_file(setup: dict, task: str) -> Path:
    script = setup["evaluation"]["tasks"][task]["script"]
    return BUILTIN_TASK_FILE if script == BUILTIN_TASK else Path(script)


def run(setup_path: Path, task: str, checkpoint: str, out: Path) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    setup_path = setup_path.absolute()
    setup = yaml.safe_load(setup_path.read_text())
    model_dir = checkpoint_path(setup, checkpoint)
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
        if out.exists():
            print(f"snaketune: kept the previous result as {keep_aside(out)}", flush=True)
        os.replace(produced[0], out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
