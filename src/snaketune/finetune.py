"""The finetune job: guard the checkpoint directory, resume when possible, run ``tune run``.

Snakemake only sees the small manifest this job writes at the end; the checkpoints live in
``<output_dir_base>/ck-out-<run_dir>/`` where Snakemake never deletes anything. The job:
- never trains a run twice at once: a lock beside the checkpoint directory makes a second
  job wait for the first, then use or resume from what it saved;
- moves aside (never deletes) checkpoints made from a different config (a fingerprint);
- resumes from the newest state a previous attempt saved: an epoch checkpoint with
  ``recipe_state/recipe_state.pt``, or a step state saved mid-epoch (:mod:`snaketune.step_state`);
- stops the training cleanly when told to: SIGTERM/SIGINT are forwarded to the training's
  process group, whose recipe then saves a step state and exits; the job keeps passing its
  output through and holds the training lock until it has exited;
- on SLURM, saves a step state ``requeue_margin_minutes`` before the job's time limit and
  requeues its own job (``scontrol requeue``), at most ``max_requeues`` times per training;
- computes ``max_steps_per_epoch`` from the data (torchtune restores its step counter and
  LR schedule on resume only when it is set);
- relaunches a training that ran out of memory with half the batch size and twice the
  gradient accumulation (the same effective batch), at most ``MAX_OOM_RETRIES`` times;
- writes ``finetune_manifest.json`` last, once every epoch checkpoint is complete: the epochs,
  the digest of the training settings it trained with (what the DAG compares, see
  snaketune.state), the checkpoint fingerprint, the batch size used and whether every resume
  was exact (same batch, threads and saved RNG states as the uninterrupted run would have).

Every attempt starts with an ``ATTEMPT_HEADER`` line in the run's log (the latest attempt:
``snaketune status`` reads it) and in ``logs/finetune-attempts.log`` (all attempts). Each one is
recorded in ``<checkpoints>/snaketune_attempts.json``: where it resumed, its batch geometry,
and when it ended, how (exit code, what stopped it), the last step it reached and the newest
state saved by then (the work an interruption lost), and whether it requeued its SLURM job.

``SNAKETUNE_END_TIME_REFRESH_SECONDS`` (default 300) is how often a SLURM job's end time is
re-read (``scontrol update TimeLimit=`` moves it); tests shorten it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from snaketune import faults, step_state, wandb_runs
from snaketune.render import INTERRUPTION_KEYS, RESUMABLE_RECIPE, VALIDATION_KEYS, write_atomic
from snaketune.state import EPOCH_LOSSES, MANIFEST, RECIPE_RNG_KEY, read_record, training_digest, write_record

FINGERPRINT = "snaketune_fingerprint.json"
# Every attempt of the run's training (this job's and earlier ones'), beside the checkpoints.
ATTEMPTS = "snaketune_attempts.json"
# Keys that may differ between a run's attempts without making its checkpoints another
# training's: the resume switches, how and where metrics are logged (turning W&B on or off),
# and when the training saves step states and requeues itself.
RESUME_KEYS = ("resume_from_checkpoint", "resume_from_step_state", "max_steps_per_epoch", "metric_logger", "log_every_n_steps")
# Validating (on/off, how often, the validation split's dataset) changes nothing the training computes.
RESUME_KEYS += INTERRUPTION_KEYS + VALIDATION_KEYS + ("dataset_val",)
ATTEMPT_HEADER = "snaketune: finetune attempt started"
ATTEMPTS_LOG = "finetune-attempts.log"
MAX_OOM_RETRIES = 3
# What CUDA, the CPU allocator, Python and the kernel's OOM killer say when memory runs out.
OUT_OF_MEMORY_FAILURE = "out of memory"
DIVERGED = "the loss is NaN/Inf (the training diverged)"
# torchtune's progress bar: "1|12|Loss: nan"
NON_FINITE_LOSS = re.compile(rb"Loss: (?:nan|-?inf)\b", re.IGNORECASE)
OUT_OF_MEMORY_TEXT = r"out of memory|OutOfMemoryError|can't allocate memory|\bMemoryError\b|oom[-_]kill"
OUT_OF_MEMORY = re.compile(OUT_OF_MEMORY_TEXT.encode(), re.IGNORECASE)
# torchtune's progress bar: "<epoch>|<global step>|Loss: <loss>"
PROGRESS = re.compile(rb"(\d+)\|(\d+)\|Loss: ")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
TIME_LIMIT = "the SLURM time limit"
END_TIME_REFRESH_SECONDS = float(os.environ.get("SNAKETUNE_END_TIME_REFRESH_SECONDS") or 300)
# After `scontrol requeue`, SLURM ends this job with SIGTERM: how long to wait for it.
REQUEUE_WAIT_SECONDS = 300
# After a stop signal from SLURM: how long past the job's end time to wait for SLURM's next
# signal, and how far away an end time may be for the signal to count as SLURM's.
SLURM_END_WAIT_SECONDS = 300
SLURM_END_HORIZON_SECONDS = 3600
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


class FinetuneError(RuntimeError):
    pass


def fingerprint(config: dict) -> str:
    """Identity of a training config, ignoring the keys a resume changes."""
    relevant = {key: value for key, value in config.items() if key not in RESUME_KEYS}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def epoch_complete(epoch_dir: Path) -> bool:
    """All files of a saved epoch are there (a save killed half-way fails this)."""
    if not (epoch_dir / "config.json").is_file() or not (epoch_dir / "adapter_config.json").is_file():
        return False
    if not any((epoch_dir / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.pt", "adapter_model.bin")):
        return False
    index = epoch_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text())["weight_map"].values())
        return all((epoch_dir / shard).is_file() for shard in shards)
    return any(epoch_dir.glob("*.safetensors"))


def complete_epochs(output_dir: Path) -> list[int]:
    epochs = []
    for path in output_dir.glob("epoch_*"):
        suffix = path.name.removeprefix("epoch_")
        if suffix.isdigit() and epoch_complete(path):
            epochs.append(int(suffix))
    return sorted(epochs)


def count_samples(config: dict) -> int:
    """Training samples torchtune will iterate over (packed samples when packing)."""
    dataset = config["dataset"]
    if dataset.get("packed"):
        from omegaconf import OmegaConf
        from torchtune import config as tune_config

        cfg = OmegaConf.create(config)
        tokenizer = tune_config.instantiate(cfg.tokenizer)
        return len(tune_config.instantiate(cfg.dataset, tokenizer))
    return split_size(dataset["data_files"], dataset["field"] if dataset["source"] == "json" else None)


def split_size(path: str, field: str | None) -> int:
    """Samples of one split: the ``field`` list of a JSON file, or the rows of a parquet file."""
    if field is not None:
        with open(path) as handle:
            return len(json.load(handle)[field])
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def steps_per_epoch(config: dict, processes: int) -> int:
    """Optimizer steps per epoch as torchtune counts them (its dataloader drops the last batch)."""
    batches = count_samples(config) // (config["batch_size"] * processes)
    steps = batches // config["gradient_accumulation_steps"]
    if steps < 1:
        raise FinetuneError(
            f"the training split has too few samples for one step of batch size {config['batch_size']} x {processes} process(es) x {config['gradient_accumulation_steps']} accumulation"
        )
    return steps


def _check_inputs(config: dict) -> None:
    paths = [config["checkpointer"]["checkpoint_dir"], config["dataset"]["data_files"]]
    validation = config.get("dataset_val") if config.get("validation") else None
    if validation:
        paths.append(validation["data_files"])
    missing = [path for path in dict.fromkeys(paths) if not Path(path).exists()]
    if missing:
        raise FinetuneError("missing on this machine: " + ", ".join(missing))
    if validation:
        field = validation["field"] if validation["source"] == "json" else None
        try:
            size = split_size(validation["data_files"], field)
        except (KeyError, TypeError):
            raise FinetuneError(f"validation is on, but {validation['data_files']} has no {field!r} split") from None
        if size == 0:
            split = repr(field) if field else "validation"
            raise FinetuneError(f"validation is on, but the {split} split of {validation['data_files']} is empty")


def _processes(command: list[str]) -> int:
    if "--nproc_per_node" in command:
        return int(command[command.index("--nproc_per_node") + 1])
    return 1


def _move_aside(output_dir: Path, reason: str) -> Path:
    target = output_dir.with_name(f"{output_dir.name}.superseded-{time.strftime('%Y%m%d-%H%M%S')}")
    output_dir.rename(target)
    print(f"snaketune: {reason}; moved the old checkpoints to {target}", flush=True)
    return target


def prepare(output_dir: Path, config: dict) -> None:
    """Make ``output_dir`` hold only checkpoints of this config (moving others aside)."""
    wanted = fingerprint(config)
    stamp = output_dir / FINGERPRINT
    if output_dir.exists() and any(output_dir.iterdir()):
        recorded = json.loads(stamp.read_text())["fingerprint"] if stamp.is_file() else None
        if recorded != wanted:
            _move_aside(
                output_dir,
                "the checkpoint directory was made from a different finetune.yaml"
                if recorded
                else "the checkpoint directory holds files of unknown origin",
            )
    output_dir.mkdir(parents=True, exist_ok=True)
    if not stamp.is_file():
        write_atomic(stamp, json.dumps({"fingerprint": wanted}) + "\n")


def read_recipe_state(state: Path) -> dict | None:
    """A saved recipe state, or None when it is missing or unreadable (torchtune writes it in
    place, so a kill while saving leaves a truncated file)."""
    if not state.is_file():
        return None
    import torch

    try:
        return torch.load(state, map_location="cpu", weights_only=False)
    except Exception as error:  # any unreadable file means: cannot resume from it
        print(f"snaketune: {state} is unreadable ({type(error).__name__}); it cannot be resumed from", flush=True)
        return None


def newest_state(output_dir: Path, epochs: int, geometry: dict) -> tuple[dict | None, bool, str]:
    """The newest saved state a training with ``geometry`` (``batch_size``,
    ``gradient_accumulation_steps``, ``steps_per_epoch``) can continue from; whether the step
    state on disk is stale (older than the newest epoch checkpoint); and why it cannot be
    continued from when it cannot ("" when there is none or it can).

    A state is ``{"resumed_from": N | "step_state", "epoch": the epoch it continues in (0-based),
    "step": the optimizer steps it contains, "saved_at": unix time, "rng_restored": bool,
    "override": the tune-run override that resumes from it}``. An epoch checkpoint counts when
    ``recipe_state.pt`` describes it and it is complete (torchtune resumes the adapter of the
    highest ``epoch_N`` with the optimizer of ``recipe_state.pt``); a step state when it was made
    with the same batch geometry and every epoch before it is complete.
    """
    done = complete_epochs(output_dir)
    recipe_path = output_dir / "recipe_state" / "recipe_state.pt"
    recipe = read_recipe_state(recipe_path) or {}
    epochs_run = int(recipe.get("epochs_run", 0))
    epoch = None
    if epochs_run and epochs_run < epochs and epochs_run - 1 in done:
        steps = int(recipe.get("max_steps_per_epoch") or geometry["steps_per_epoch"])
        epoch = {
            "resumed_from": epochs_run - 1,
            "epoch": epochs_run,
            "step": epochs_run * steps,
            "saved_at": recipe_path.stat().st_mtime,
            "rng_restored": RECIPE_RNG_KEY in recipe,
            "override": "resume_from_checkpoint=True",
        }
    found = step_state.describe(output_dir / step_state.STEP_STATE)
    if found is None:
        return epoch, False, ""
    if epoch is not None and found[step_state.GLOBAL_STEP] <= epoch["step"]:
        return epoch, True, f"epoch_{epochs_run - 1} is newer"
    made = {key: found[key] for key in geometry}
    if made != geometry:
        return epoch, False, f"it was made with {made}, this attempt trains with {geometry}"
    if found[step_state.EPOCH] >= epochs or any(n not in done for n in range(found[step_state.EPOCH])):
        return epoch, False, "an epoch checkpoint before it is missing or incomplete"
    return (
        {
            "resumed_from": "step_state",
            "epoch": found[step_state.EPOCH],
            "step": found[step_state.GLOBAL_STEP],
            "saved_at": found[step_state.SAVED_AT],
            "rng_restored": True,
            "override": "resume_from_step_state=True",
        },
        False,
        "",
    )


def resume_point(output_dir: Path, epochs: int, geometry: dict) -> dict | None:
    """Where a previous attempt can be continued from (:func:`newest_state`), or None to start
    fresh. Epoch directories from the epoch it continues in on (a save killed half-way) are set
    aside first, and a stale step state is removed."""
    state, stale, why = newest_state(output_dir, epochs, geometry)
    if why:
        print(f"snaketune: not resuming from {step_state.STEP_STATE}: {why}", flush=True)
    if stale:
        step_state.remove(output_dir / step_state.STEP_STATE)
    if state is None:
        return None
    for path in output_dir.glob("epoch_*"):
        suffix = path.name.removeprefix("epoch_")
        if suffix.isdigit() and int(suffix) >= state["epoch"]:
            _quarantine(path)
    if state["resumed_from"] == "step_state":
        saved = time.strftime(TIME_FORMAT, time.localtime(state["saved_at"]))
        print(
            f"snaketune: resuming from the step state at step {state['step']} (epoch {state['epoch'] + 1} of {epochs}, saved {saved})",
            flush=True,
        )
    else:
        print(f"snaketune: resuming from epoch_{state['resumed_from']} (recipe_state present)", flush=True)
    return state


def _quarantine(path: Path) -> None:
    target = path.with_name(f".incomplete-{path.name}-{int(time.time())}")
    path.rename(target)
    print(f"snaketune: {path.name} is incomplete (killed while saving?); moved to {target.name}", flush=True)


def _cgroup_oom_kills() -> int | None:
    """How often the kernel's OOM killer struck in this process's cgroup (a SLURM job's
    memory limit kills the training with SIGKILL and leaves no message of its own)."""
    try:
        relative = Path("/proc/self/cgroup").read_text().splitlines()[0].split(":", 2)[2]
        events = Path("/sys/fs/cgroup", relative.lstrip("/"), "memory.events").read_text()
    except (OSError, IndexError):
        return None
    counts = dict(line.split() for line in events.splitlines() if line.strip())
    return int(counts.get("oom_kill", 0))


def slurm_end_time(job_id: str) -> float | None:
    """When a SLURM job reaches its time limit (unix time), or None (no limit, no SLURM)."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%e"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    try:
        return time.mktime(time.strptime(out.strip(), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:  # "Unknown", "N/A": no time limit
        return None


class Supervisor:
    """Tells the training to stop, by SIGTERM/SIGINT to its process group: when this job
    receives one of those (forwarded), or ``margin`` seconds before the SLURM job ``job_id``
    reaches its time limit. What stopped it: ``stopped_by`` (a signal's name or ``TIME_LIMIT``)."""

    def __init__(self, job_id: str | None = None, margin: float = 0) -> None:
        self.child: subprocess.Popen | None = None
        self.stopped_by: str | None = None
        self.signal: int | None = None  # the first stop signal this job received
        self.signals = 0  # how many it received
        self._job_id, self._margin = job_id, margin
        self._end: float | None = None
        self._next_refresh = float("inf")
        if job_id and margin:
            end = slurm_end_time(job_id)
            if end is not None and end - margin <= time.time():
                print(
                    f"snaketune: SLURM job {job_id} ends at {time.strftime(TIME_FORMAT, time.localtime(end))}, in less than "
                    f"requeue_margin_minutes ({margin / 60:g}): no step state and requeue before its time limit in this job",
                    flush=True,
                )
            elif end is not None:
                self._end, self._next_refresh = end, time.monotonic() + END_TIME_REFRESH_SECONDS
                print(f"snaketune: SLURM job {job_id} ends at {time.strftime(TIME_FORMAT, time.localtime(end))}", flush=True)

    def install(self) -> None:
        for number in STOP_SIGNALS:
            signal.signal(number, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        # no printing here: the main thread may be inside a write to the same stream
        self.signals += 1
        if self.signal is None:
            self.signal = signum
            self.stopped_by = self.stopped_by or signal.Signals(signum).name
        self._tell(signum)

    def _tell(self, signum: int) -> None:
        if self.child is not None and self.child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.child.pid, signum)

    def timeout(self) -> float | None:
        """Seconds until the clock needs a look (the deadline or the next end-time refresh)."""
        if self._end is None or self.stopped_by:
            return None
        return max(0.0, min(self._end - self._margin - time.time(), self._next_refresh - time.monotonic()))

    def check(self) -> None:
        """Refresh the job's end time when due; stop the training at end - margin."""
        if self._end is None or self.stopped_by:
            return
        if time.monotonic() >= self._next_refresh:
            self._end = slurm_end_time(self._job_id) or self._end
            self._next_refresh = time.monotonic() + END_TIME_REFRESH_SECONDS
        if time.time() >= self._end - self._margin:
            self.stopped_by = TIME_LIMIT
            print(
                f"\nsnaketune: SLURM job {self._job_id} ends at {time.strftime(TIME_FORMAT, time.localtime(self._end))}: "
                "stopping the training to save a step state and requeue the job",
                flush=True,
            )
            self._tell(signal.SIGTERM)


def run_training(command: list[str], env: dict, supervisor: Supervisor) -> tuple[int, str, int | None]:
    """Run ``tune run`` in a process group of its own, passing its output through. Returns its
    exit code, what went wrong ("", ``OUT_OF_MEMORY_FAILURE`` or ``DIVERGED``: stopped at the
    first NaN/Inf loss, torchtune would train on, and save, garbage) and the last optimizer
    step it reported."""
    kills_before = _cgroup_oom_kills()
    # its own group: the job's signals reach it once, through the supervisor (a terminal's
    # Ctrl-C would otherwise reach it twice), and torchrun's workers with it
    process = subprocess.Popen(
        command,
        env=dict(env, **{faults.JOB_GROUP_ENV: str(os.getpgrp())}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    supervisor.child = process
    if supervisor.signal is not None:  # told to stop before it started
        supervisor._tell(supervisor.signal)
    tail = b""
    diverged = False
    reached = None
    passing = True
    while True:
        ready, _, _ = select.select([process.stdout], [], [], supervisor.timeout())
        if ready:
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                break
            if passing:
                try:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.buffer.flush()
                except OSError:  # the log is gone: keep draining, or the training blocks on its output
                    passing = False
            tail = (tail + chunk)[-65536:]
            steps = PROGRESS.findall(tail[-len(chunk) - 64 :])
            if steps:
                reached = int(steps[-1][1])
            if not diverged and NON_FINITE_LOSS.search(tail):
                diverged = True
                print(f"\nsnaketune: {DIVERGED}: stopping the training", flush=True)
                # SIGKILL: a stop signal would make the recipe save the diverged weights
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        supervisor.check()
    code = process.wait()
    supervisor.child = None
    if diverged:
        return code or 1, DIVERGED, reached
    if code == 0:
        return 0, "", reached
    kills_after = _cgroup_oom_kills()
    killed = kills_before is not None and kills_after is not None and kills_after > kills_before
    return code, OUT_OF_MEMORY_FAILURE if killed or OUT_OF_MEMORY.search(tail) else "", reached


def smaller_batch(batch_size: int, accumulation: int) -> tuple[int, int] | None:
    """Half the batch, twice the accumulation: the same effective batch in less memory."""
    if batch_size < 2 or batch_size % 2:
        return None
    return batch_size // 2, accumulation * 2


def write_manifest(run_dir: Path, output_dir: Path, epochs: int, training: dict | None = None) -> dict:
    done = complete_epochs(output_dir)
    missing = [epoch for epoch in range(epochs) if epoch not in done]
    if missing:
        raise FinetuneError(f"training ended but epoch checkpoint(s) {missing} are missing or incomplete in {output_dir}")
    attempts = (read_record(output_dir / ATTEMPTS) or {}).get("attempts", [])
    exact, reasons = exactness(attempts)
    last = attempts[-1] if attempts else {}
    manifest = {
        "output_dir": str(output_dir),
        "epochs": {f"epoch_{e}": str(output_dir / f"epoch_{e}") for e in range(epochs)},
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "batch_size": last.get("batch_size"),
        "gradient_accumulation_steps": last.get("gradient_accumulation_steps"),
        **(training or {}),
        "fingerprint": (read_record(output_dir / FINGERPRINT) or {}).get("fingerprint"),
        "attempts": len(attempts),
        "wandb_run_ids": [attempt["wandb"]["run_id"] for attempt in attempts if attempt.get("wandb")],
        "resumes_exact": exact,
        "inexact_resumes": reasons,
        # per epoch: token-weighted mean training loss and validation loss (None: not validated)
        "losses": epoch_losses(output_dir, epochs),
    }
    faults.reached("finetune:before-manifest", run_dir.name)
    write_record(run_dir / MANIFEST, manifest)
    faults.reached("finetune:after-manifest", run_dir.name)
    return manifest


def epoch_losses(output_dir: Path, epochs: int) -> dict:
    """``{"epoch_N": {"train_loss", "val_loss"}}`` from the recipe's record (None where unknown:
    a training by an older snaketune, an epoch trained without validation)."""
    recorded = read_record(output_dir / EPOCH_LOSSES) or {}
    losses = {}
    for epoch in range(epochs):
        entry = recorded.get(f"epoch_{epoch}") or {}
        losses[f"epoch_{epoch}"] = {"train_loss": entry.get("train_loss"), "val_loss": entry.get("val_loss")}
    return losses


def record_attempt(output_dir: Path, attempt: dict) -> None:
    """Append one training attempt to the record beside the checkpoints."""
    path = output_dir / ATTEMPTS
    write_record(path, {"attempts": [*(read_record(path) or {}).get("attempts", []), attempt]})


def update_attempt(output_dir: Path, fields: dict) -> None:
    """Add ``fields`` to the latest attempt of the record (how it ended)."""
    path = output_dir / ATTEMPTS
    attempts = (read_record(path) or {}).get("attempts", [])
    if attempts:
        attempts[-1].update(fields)
        write_record(path, {"attempts": attempts})


def finish_attempt(output_dir: Path, exit_code: int, end: dict | None = None) -> None:
    """Record that the latest attempt ended, and how (``end``: attempt_end). An attempt killed
    with its job never gets this; close_killed_attempt fills in its end later, without
    ``finished`` (what tells a dead attempt's W&B run from a finished one)."""
    update_attempt(output_dir, {**(end or {}), "exit_code": exit_code, "finished": _stamp(time.time())})


def _stamp(unix_time: float | None) -> str | None:
    return None if unix_time is None else time.strftime(TIME_FORMAT, time.localtime(unix_time))


def _unix(stamp: str | None) -> float | None:
    try:
        return time.mktime(time.strptime(stamp, TIME_FORMAT)) if stamp else None
    except ValueError:
        return None


def attempt_end(output_dir: Path, epochs: int, geometry: dict, code: int | None, reached: int | None, stopped_by: str | None) -> dict:
    """How an attempt ended: its exit code, what stopped it, the last step it reached and the
    newest state saved by then (what a following attempt continues from)."""
    saved, _, _ = newest_state(output_dir, epochs, geometry) if code != 0 else (None, False, "")
    end = {"ended": _stamp(time.time()), "exit_code": code, "stopped_by": stopped_by, "reached_step": reached}
    if code != 0:
        end.update(saved_step=saved["step"] if saved else 0, saved_at=_stamp(saved["saved_at"]) if saved else None)
    return end


def close_killed_attempt(output_dir: Path, epochs: int, geometry: dict) -> None:
    """Record the end of a previous attempt that died without recording it (SIGKILL, a node
    failure, the OOM killer): its last step and the time from its metric log (torchtune's
    DiskLogger writes one ``log_<unix time>.txt`` per attempt)."""
    attempts = (read_record(output_dir / ATTEMPTS) or {}).get("attempts", [])
    if not attempts or "ended" in attempts[-1]:
        return
    started = _unix(attempts[-1].get("started")) or 0
    logs = [path for path in (output_dir / "logs").glob("log_*.txt") if path.stem[4:].isdigit() and int(path.stem[4:]) >= int(started)]
    reached, ended = None, started
    if logs:
        log = max(logs, key=lambda path: int(path.stem[4:]))
        steps = re.findall(r"^Step (\d+) \|", log.read_text(errors="replace"), re.MULTILINE)
        reached, ended = (int(steps[-1]) if steps else None), log.stat().st_mtime
    end = attempt_end(output_dir, epochs, geometry, None, reached, "killed")
    update_attempt(output_dir, {**end, "ended": _stamp(ended)})


def current_training(attempts: list[dict]) -> list[dict]:
    """The attempts since the latest one that started from scratch."""
    starts = [index for index, attempt in enumerate(attempts) if attempt.get("resumed_from") is None]
    return attempts[starts[-1] :] if starts else attempts


def _resume_name(attempt: dict) -> str:
    if attempt.get("resumed_from") == "step_state":
        return f"the resume at step {attempt.get('resumed_step')}"
    return f"the resume from epoch_{attempt.get('resumed_from')}"


def history(attempts: list[dict]) -> dict:
    """What ``snaketune status`` says about a training's attempts: where the latest one resumed,
    how often SLURM started the job again (and how often the job requeued itself), and each
    interruption with the work it lost: the steps it reached beyond the newest saved state, and
    the wall time since that state was saved (since the attempt started when it saved nothing).
    ``unsaved_streak``: how many of the latest interruptions in a row saved nothing new."""
    current = current_training(attempts)
    offset = len(attempts) - len(current)
    last = attempts[-1] if attempts else {}
    resumed = ""
    if last.get("resumed_from") is not None and last.get("resumed_step") is not None:
        resumed = f"resumed at step {last['resumed_step']} of epoch {int(last.get('resumed_epoch') or 0) + 1} (attempt {len(attempts)})"
    requeues = sum(
        1
        for before, after in zip(current, current[1:], strict=False)
        if after.get("slurm_job") and after["slurm_job"] == before.get("slurm_job")
    )
    interruptions = []
    for number, attempt in enumerate(current, start=offset + 1):
        if "ended" not in attempt or attempt.get("exit_code") == 0:
            continue
        resumed_step = int(attempt.get("resumed_step") or 0)
        saved = int(attempt.get("saved_step") or 0)
        reached = int(attempt.get("reached_step") or resumed_step)
        saved_new = saved > resumed_step
        since = _unix(attempt.get("saved_at")) if saved_new else _unix(attempt.get("started"))
        ended = _unix(attempt.get("ended"))
        interruptions.append(
            {
                "attempt": number,
                "by": attempt.get("stopped_by") or f"exit code {attempt.get('exit_code')}",
                "saved_step": saved,
                "steps_lost": max(0, reached - saved),
                "seconds_lost": None if since is None or ended is None else max(0.0, ended - since),
                "saved_new": saved_new,
                "requeued": bool(attempt.get("requeued")),
            }
        )
    streak = 0
    for interruption in reversed(interruptions):
        if interruption["saved_new"]:
            break
        streak += 1
    return {
        "resumed": resumed,
        "requeues": requeues,
        "own_requeues": sum(1 for attempt in current if attempt.get("requeued")),
        "interruptions": interruptions,
        "unsaved_streak": streak,
    }


def exactness(attempts: list[dict]) -> tuple[bool, list[str]]:
    """Whether the training equals an uninterrupted one on the same device: every resume since
    the attempt that started it restored the RNG states and used its batch size, gradient
    accumulation and thread count. With the reasons when not (e.g. an OOM relaunch)."""
    current = current_training(attempts)
    reasons = []
    for attempt in current[1:]:
        where = _resume_name(attempt)
        if not attempt.get("rng_restored"):
            reasons.append(f"{where} had no saved RNG states (a recipe state of an older snaketune)")
        for key, label in (("batch_size", "batch size"), ("gradient_accumulation_steps", "gradient accumulation"), ("threads", "threads")):
            if attempt.get(key) != current[0].get(key):
                reasons.append(f"{where} used {label} {attempt.get(key)}, not {current[0].get(key)}")
    return not reasons, reasons


def _train(output_dir: Path, config: dict, command: list[str], supervisor: Supervisor) -> tuple[int, dict]:
    """Train (or resume) until all epochs are saved, recovering from out-of-memory failures,
    stopping when the supervisor says so (and requeueing the SLURM job before its time limit).

    Returns the exit code and what the training used (batch size, accumulation, OOM retries).
    """
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", HF_HUB_OFFLINE="1")
    epochs = int(config["epochs"])
    batch_size, accumulation = int(config["batch_size"]), int(config["gradient_accumulation_steps"])
    used = {"batch_size": batch_size, "gradient_accumulation_steps": accumulation, "oom_retries": 0}
    retry = 0
    while True:
        if supervisor.signal is not None:  # told to stop between attempts
            return 128 + supervisor.signal, used
        batch = {"batch_size": batch_size, "gradient_accumulation_steps": accumulation}
        geometry = {**batch, "steps_per_epoch": steps_per_epoch({**config, **batch}, _processes(command))}
        close_killed_attempt(output_dir, epochs, geometry)
        resume = resume_point(output_dir, epochs, geometry)
        if resume is None and any(output_dir.glob("epoch_*")):
            _move_aside(output_dir, "the saved epochs cannot be resumed from (no readable recipe state)")
            prepare(output_dir, config)
        overrides = [f"max_steps_per_epoch={geometry['steps_per_epoch']}"]
        if resume is not None:
            overrides.append(resume["override"])
        if retry:
            overrides += [f"{key}={value}" for key, value in batch.items()]
        # each attempt its own offline W&B run, its id recorded before it starts (snaketune.wandb_runs)
        wandb_run = wandb_runs.attempt_run(config, env)
        record_attempt(
            output_dir,
            {
                "started": time.strftime(TIME_FORMAT),
                "slurm_job": os.environ.get("SLURM_JOB_ID"),
                "resumed_from": None if resume is None else resume["resumed_from"],
                "rng_restored": None if resume is None else resume["rng_restored"],
                # the optimizer steps it continues after, in epoch resumed_epoch (0-based)
                "resumed_step": None if resume is None else resume["step"],
                "resumed_epoch": None if resume is None else resume["epoch"],
                **batch,
                # CPU results depend on the thread count (the job sets OMP_NUM_THREADS)
                "threads": os.environ.get("OMP_NUM_THREADS"),
                "wandb": wandb_run,
            },
        )
        full = command + overrides
        print("snaketune: " + " ".join(full), flush=True)
        if wandb_run:
            print(f"snaketune: W&B run {wandb_run['run_id']} (offline, in {output_dir / 'wandb'})", flush=True)
        code, problem, reached = run_training(full, wandb_runs.attempt_environment(env, wandb_run), supervisor)
        end = attempt_end(output_dir, epochs, geometry, code, reached, supervisor.stopped_by)
        finish_attempt(output_dir, code, end)
        if code == 0:
            return 0, used
        print(f"snaketune: tune run exited with {code}" + (f" ({problem})" if problem else ""), file=sys.stderr, flush=True)
        if supervisor.stopped_by == TIME_LIMIT:
            return requeue(output_dir, config, supervisor, resume, end), used
        if supervisor.stopped_by:
            print(f"snaketune: stopped by {supervisor.stopped_by}; the next attempt resumes from step {end['saved_step']}", flush=True)
            if os.environ.get("SLURM_JOB_ID"):
                await_slurm_end(os.environ["SLURM_JOB_ID"], supervisor)
            return code, used
        out_of_memory = problem == OUT_OF_MEMORY_FAILURE
        smaller = smaller_batch(batch_size, accumulation) if out_of_memory else None
        if smaller is None or retry == MAX_OOM_RETRIES:
            if out_of_memory:
                print(f"snaketune: giving up after {retry} out-of-memory retries (batch size {batch_size})", file=sys.stderr, flush=True)
            return code, used
        print(
            f"snaketune: out of memory with batch size {batch_size}: retry {retry + 1} of {MAX_OOM_RETRIES} with batch size "
            f"{smaller[0]} and gradient accumulation {smaller[1]} (effective batch {batch_size * accumulation} unchanged)",
            flush=True,
        )
        batch_size, accumulation = smaller
        retry += 1
        used = {"batch_size": batch_size, "gradient_accumulation_steps": accumulation, "oom_retries": retry}


def await_slurm_end(job_id: str, supervisor: Supervisor) -> None:
    """After a stop signal, stay while SLURM's end of the job is still to come: a preempted job
    (its end time moved to the end of its grace time) is requeued only if it still runs then;
    one that exits earlier ends FAILED and stays down (measured, Slurm 22.05). The signals at
    the end of the grace time end the wait. A job past its end time (the time limit, scancel)
    is already decided; a signal whose job ends in more than an hour was not SLURM's."""
    now = time.time()
    end = slurm_end_time(job_id)
    if end is None or end <= now or end - now > SLURM_END_HORIZON_SECONDS:
        return
    seen = supervisor.signals
    print(
        f"snaketune: waiting for SLURM to end job {job_id} at the end of its grace time ({end - now:.0f} s): it requeues it then",
        flush=True,
    )
    while supervisor.signals == seen and time.time() < end + SLURM_END_WAIT_SECONDS:
        time.sleep(0.5)


def requeue(output_dir: Path, config: dict, supervisor: Supervisor, resume: dict | None, end: dict) -> int:
    """After the training stopped for the SLURM time limit: requeue the job (``scontrol
    requeue``) when this attempt saved something new and the training has requeued itself fewer
    than ``max_requeues`` times; then wait for SLURM to end this job. Returns the exit code."""
    job = os.environ["SLURM_JOB_ID"]
    limit = int(config.get("max_requeues") or 0)
    attempts = (read_record(output_dir / ATTEMPTS) or {}).get("attempts", [])
    used = sum(1 for attempt in current_training(attempts) if attempt.get("requeued"))
    rerun = f"rerun the workflow to continue from step {end['saved_step']}"
    if end["saved_step"] <= (resume or {}).get("step", 0):
        print(
            f"snaketune: this attempt saved nothing after step {end['saved_step']} before the time limit: not requeueing "
            "(raise resources.finetune.time, or lower training.requeue_margin_minutes)",
            flush=True,
        )
        return 1
    if used >= limit:
        print(f"snaketune: the training requeued itself {used} times already (training.max_requeues: {limit}); {rerun}", flush=True)
        return 1
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if result.returncode != 0:
        print(f"snaketune: scontrol requeue {job} failed: {(result.stderr or result.stdout).strip()}; {rerun}", flush=True)
        return 1
    update_attempt(output_dir, {"requeued": True})
    print(
        f"snaketune: requeued SLURM job {job} (requeue {used + 1} of at most {limit}); it resumes from step {end['saved_step']}", flush=True
    )
    waited = time.monotonic()
    while supervisor.signal is None and time.monotonic() - waited < REQUEUE_WAIT_SECONDS:
        time.sleep(0.5)
    return 128 + (supervisor.signal or 0) if supervisor.signal else 1


def _ignore_stop_signals() -> None:
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)


@contextlib.contextmanager
def output_copied_to(history: Path) -> Iterator[None]:
    """Also append everything this job and its children print to ``history``.

    Snakemake deletes a job's log before every run of the job (a SLURM requeue included), so
    only this file keeps the attempts before the last one.
    """
    history.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    # tee ignores the job's stop signals (a Ctrl-C, SLURM's SIGTERM to every process of the job):
    # it must outlive the training's last words, and ends when this process closes its input
    tee = subprocess.Popen(["tee", "-a", str(history)], stdin=subprocess.PIPE, stdout=saved[0], preexec_fn=_ignore_stop_signals)
    os.dup2(tee.stdin.fileno(), 1)
    os.dup2(tee.stdin.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        tee.stdin.close()
        tee.wait()
        os.close(saved[0])
        os.close(saved[1])


def run(run_dir: Path, command: list[str]) -> int:
    run_dir = run_dir.absolute()
    with output_copied_to(run_dir / "logs" / ATTEMPTS_LOG):
        return _run(run_dir, command)


def _run(run_dir: Path, command: list[str]) -> int:
    job = os.environ.get("SLURM_JOB_ID")
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{ATTEMPT_HEADER} {started} on {socket.gethostname()}" + (f" (SLURM job {job})" if job else ""), flush=True)
    config_path = Path(command[command.index("--config") + 1])
    config = yaml.safe_load(config_path.read_text())
    output_dir = Path(config["output_dir"])
    epochs = int(config["epochs"])
    _check_inputs(config)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = output_dir.with_name(f".{output_dir.name}.lock")
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # e.g. the training of a killed snakemake driver still runs: wait for it, then
            # use (or resume from) what it saved instead of training the run twice at once.
            print(f"snaketune: another training of this run holds {lock_path}; waiting for it to end", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        # who trains: `snaketune status` shows it for a local run
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        # from here on a stop signal is forwarded to the training, and the lock held until it ended
        margin = 60 * float(config.get("requeue_margin_minutes") or 0) if RESUMABLE_RECIPE in command else 0
        supervisor = Supervisor(job, margin)
        supervisor.install()
        prepare(output_dir, config)
        faults.reached("finetune:before-training", run_dir.name)
        used = {}
        if complete_epochs(output_dir) == list(range(epochs)):
            print(f"snaketune: all {epochs} epoch checkpoints are already complete in {output_dir}; not retraining", flush=True)
            step_state.remove(output_dir / step_state.STEP_STATE)  # one left by a kill before its removal
        else:
            code, used = _train(output_dir, config, command, supervisor)
            if code != 0:
                return code
        # what the DAG compares: the settings of the run's setup this training was rendered from
        setup = yaml.safe_load((run_dir / "setup_finetune.yaml").read_text())
        write_manifest(run_dir, output_dir, epochs, {"started": started, "training_digest": training_digest(setup), **used})
    print("snaketune: finetune finished", flush=True)
    return 0
