"""The evaluate job: every planned (task, checkpoint) of one run, in one process.

One job per run (controls included) instead of one per (task, checkpoint): each checkpoint is
loaded once for all its tasks and released before the next, and on SLURM the run costs one
allocation. The job redoes the pairs whose result is missing or outdated (their sidecar says
so: snaketune.state); when none is, it was forced (``-R evaluate``, ``--forcerun``) and redoes
them all. ``--only TASK:CHECKPOINT`` restricts it to named pairs (by hand, or per pair).

Each pair still gets one deterministic ``<run_dir>/eval/logs/<task>_<checkpoint>.eval``: inspect
names its logs by time, so the job writes into a private folder and renames the one log into
place only when the evaluation succeeded. A log already there is moved into
``eval/logs/superseded-<time>-…/`` (with its sidecar) then, never overwritten. After the log,
the pair's sidecar ``<task>_<checkpoint>.eval.json`` records the digests of the evaluation
settings and of the training it evaluated, the checkpoint, the status. A pair that fails
records its error in its sidecar and does not stop the others: the job exits 0 once every pair
has a log or a recorded failure (Snakemake would delete every output of a failing job), and the
next run redoes exactly the failed pairs. Last, the job writes ``eval/evaluations.json``, the
output Snakemake sees: what it did.

The checkpoint ``best`` is the epoch with the lowest validation loss, decided here from the
run's per-epoch losses (the manifest's, completed by the validate job's record), once every epoch
has one: its sidecar records the ``epoch`` it resolved to, and the pair is outdated when the run's
best epoch is another one (a retrained run re-decides).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from snaketune import faults
from snaketune.parse import BEST
from snaketune.plan import BUILTIN_TASK
from snaketune.scaffold import eval_log_name, keep_aside
from snaketune.state import (
    MANIFEST,
    SUCCESS,
    evaluation_digest,
    evaluation_outdated,
    read_record,
    sidecar_path,
    training_digest,
    write_record,
)
from snaketune.validation import best_epoch, best_outdated, run_losses, val_losses

BUILTIN_TASK_FILE = Path(__file__).parent / "tasks" / "exact_match.py"
# <run_dir>/eval/evaluations.json: the job's own output, written last
RECORD = Path("eval") / "evaluations.json"


class EvaluateError(RuntimeError):
    pass


def resolve_checkpoint(checkpoint: str, manifest: dict | None, losses: dict | None = None) -> str:
    """``epoch_N`` for a checkpoint name: ``best`` is the epoch of lowest validation loss
    (``losses``: the run's per-epoch losses; default the manifest's), once every epoch has one."""
    if checkpoint != BEST:
        return checkpoint
    losses = (manifest or {}).get("losses") if losses is None else losses
    validated = val_losses(losses)
    missing = [key for key in (manifest or {}).get("epochs", {}) if int(key.removeprefix("epoch_")) not in validated]
    if not validated or missing:
        raise EvaluateError(
            f"the run's best epoch by validation loss cannot be decided: {', '.join(missing) or 'no epoch'} has no validation loss"
            " (trained without validation: turn it on and rerun the workflow, whose validate job computes them)"
        )
    return f"epoch_{best_epoch(losses)}"


def checkpoint_path(setup: dict, checkpoint: str, manifest: dict | None, losses: dict | None = None) -> Path:
    """The model directory evaluated: the base model for ``base``, else the epoch checkpoint
    the run's manifest lists (``best``: the one of lowest validation loss)."""
    if checkpoint == "base":
        return Path(setup["model_path"])
    checkpoint = resolve_checkpoint(checkpoint, manifest, losses)
    if manifest is None or checkpoint not in manifest.get("epochs", {}):
        raise EvaluateError(f"the run's {MANIFEST} lists no {checkpoint} (has the run trained?)")
    return Path(manifest["epochs"][checkpoint])


def task_file(setup: dict, task: str) -> Path:
    script = setup["evaluation"]["tasks"][task]["script"]
    return BUILTIN_TASK_FILE if script == BUILTIN_TASK else Path(script)


def planned_pairs(setup: dict) -> list[tuple[str, str]]:
    """Every (task, checkpoint) the run's plan evaluates, checkpoint by checkpoint."""
    pairs = [(task, checkpoint) for task, spec in setup["evaluation"]["tasks"].items() for checkpoint in spec["checkpoints"]]
    order = list(dict.fromkeys(checkpoint for _, checkpoint in pairs))
    return sorted(pairs, key=lambda pair: order.index(pair[1]))


def pairs_to_redo(setup: dict, run_dir: Path) -> list[tuple[str, str]]:
    """The planned pairs whose log is missing or whose sidecar says it is outdated."""
    trained = training_digest(setup) if setup["type"] == "fine-tuned" else None
    manifest = read_record(run_dir / MANIFEST) if trained else None
    losses = run_losses(run_dir, manifest) if trained else None
    redo = []
    for task, checkpoint in planned_pairs(setup):
        log = run_dir / "eval" / "logs" / eval_log_name(task, checkpoint)
        sidecar = read_record(sidecar_path(log))
        if (
            not log.exists()
            or evaluation_outdated(sidecar, evaluation_digest(setup, task), trained)
            or (checkpoint == BEST and best_outdated(sidecar, losses))
        ):
            redo.append((task, checkpoint))
    return redo


def run(setup_path: Path, only: list[tuple[str, str]] | None = None) -> list[dict]:
    """Evaluate the run's pairs (see the module's doc); returns what each pair ended with."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    setup_path = setup_path.absolute()
    run_dir = setup_path.parent
    setup = yaml.safe_load(setup_path.read_text())
    planned = planned_pairs(setup)
    unknown = [pair for pair in only or [] if pair not in planned]
    if unknown:
        raise EvaluateError(f"not planned for this run: {', '.join(f'{t}:{c}' for t, c in unknown)} (planned: {planned})")
    todo = only or pairs_to_redo(setup, run_dir) or planned
    print(f"snaketune: evaluating {len(todo)} of {len(planned)} planned pair(s): {', '.join(f'{t}/{c}' for t, c in todo)}", flush=True)
    manifest = read_record(run_dir / MANIFEST) if setup["type"] == "fine-tuned" else None
    if manifest is not None:  # its losses with the validate job's validation losses
        manifest = {**manifest, "losses": run_losses(run_dir, manifest)}
    outcomes = []
    for checkpoint in dict.fromkeys(checkpoint for _, checkpoint in todo):
        tasks = [task for task, c in todo if c == checkpoint]
        outcomes += _evaluate_checkpoint(setup, setup_path, checkpoint, tasks, manifest)
    write_record(run_dir / RECORD, {"pairs": outcomes, "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    failed = [f"{o['task']}/{o['checkpoint']}: {o['error']}" for o in outcomes if o["status"] != SUCCESS]
    for line in failed:
        print(f"snaketune: evaluation FAILED (recorded in its sidecar; the next run redoes it): {line}", flush=True)
    return outcomes


def _evaluate_checkpoint(setup: dict, setup_path: Path, checkpoint: str, tasks: list[str], manifest: dict | None) -> list[dict]:
    """All tasks on one checkpoint, loaded once; each task's failure is its own."""
    out_dir = setup_path.parent / "eval" / "logs"
    record = {
        "checkpoint": checkpoint,
        "training_digest": manifest.get("training_digest") if manifest else None,
    }
    outcomes = []

    def finish(task: str, error: Exception | None) -> None:
        outcome = {
            "task": task,
            **record,
            "evaluation_digest": evaluation_digest(setup, task),
            "status": SUCCESS if error is None else "error",
            "error": None if error is None else f"{type(error).__name__}: {error}"[:2000],
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        # a failure leaves the log in place (if any); this record makes it outdated
        write_record(sidecar_path(out_dir / eval_log_name(task, checkpoint)), outcome)
        outcomes.append(outcome)
        if error is None:
            faults.reached("evaluate:after-sidecar", setup["run_dir"])

    try:
        if checkpoint != "base":
            # the epoch evaluated (for best: the one of lowest validation loss, decided now)
            record["epoch"] = int(resolve_checkpoint(checkpoint, manifest).removeprefix("epoch_"))
            if checkpoint == BEST:
                print(f"snaketune: best epoch by validation loss: epoch_{record['epoch']}", flush=True)
        model_dir = checkpoint_path(setup, checkpoint, manifest)
        record["model_path"] = str(model_dir)
        model = _load_model(setup, model_dir)
    except Exception as error:  # the checkpoint cannot be evaluated: every task on it failed
        for task in tasks:
            finish(task, error)
        return outcomes
    with model:  # released (inspect's hf provider drops model and tokenizer) before the next one
        for task in tasks:
            try:
                _evaluate_task(setup, setup_path, task, checkpoint, model, out_dir / eval_log_name(task, checkpoint))
            except Exception as error:
                finish(task, error)
            else:
                finish(task, None)
    return outcomes


def _load_model(setup: dict, model_dir: Path):
    if not model_dir.exists():
        raise EvaluateError(f"missing on this machine: {model_dir}")
    import torch
    from inspect_ai.model import get_model

    from snaketune.prompts import hf_model_args

    evaluation = setup["evaluation"]
    device = "cuda" if int(setup["resources"]["evaluate"]["gpus"]) > 0 and torch.cuda.is_available() else "cpu"
    # memoize=False: inspect keeps memoized models (and their weights) for the whole process
    return get_model(
        "hf/local",
        memoize=False,
        model_path=str(model_dir),
        device=device,
        do_sample=evaluation["temperature"] > 0,
        # the chat template and tokenizer call that give the prompts training had
        **hf_model_args(setup),
    )


def _evaluate_task(setup: dict, setup_path: Path, task: str, checkpoint: str, model, out: Path) -> None:
    script = task_file(setup, task)
    if not script.exists():
        raise EvaluateError(f"missing on this machine: {script}")
    from inspect_ai import eval as inspect_eval

    evaluation = setup["evaluation"]
    sampling = {"temperature": evaluation["temperature"]} if evaluation["temperature"] > 0 else {}
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", dir=out.parent))
    try:
        logs = inspect_eval(
            os.path.relpath(script),  # inspect treats a task path as a glob: absolute ones fail
            model=model,
            task_args={"config_path": str(setup_path)},
            log_dir=str(scratch),
            log_format="eval",
            max_tokens=evaluation["max_tokens"],
            # inspect's hf provider batches as many samples as it may run at once
            max_connections=int(evaluation["batch_size"]),
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
