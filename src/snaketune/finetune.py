"""The finetune job: guard the checkpoint directory, resume when possible, run ``tune run``.

Snakemake only sees the small manifest this job writes at the end; the checkpoints live in
``<output_dir_base>/ck-out-<run_dir>/`` where Snakemake never deletes anything. The job:
- never trains a run twice at once: a lock beside the checkpoint directory makes a second
  job wait for the first, then use or resume from what it saved;
- moves aside (never deletes) checkpoints made from a different config (a fingerprint);
- resumes from ``recipe_state/recipe_state.pt`` when a previous attempt left one;
- computes ``max_steps_per_epoch`` from the data (torchtune restores its step counter and
  LR schedule on resume only when it is set);
- relaunches a training that ran out of memory with half the batch size and twice the
  gradient accumulation (the same effective batch), at most ``MAX_OOM_RETRIES`` times;
- writes ``finetune_manifest.json`` last, once every epoch checkpoint is complete: the epochs,
  the digest of the training settings it trained with (what the DAG compares, see
  snaketune.state), the checkpoint fingerprint, the batch size used and whether every resume
  was exact (same batch, threads and saved RNG states as the uninterrupted run would have).

Every attempt starts with an ``ATTEMPT_HEADER`` line in the run's log (the latest attempt:
``snaketune status`` reads it) and in ``logs/finetune-attempts.log`` (all attempts).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from snaketune import faults, wandb_runs
from snaketune.render import write_atomic
from snaketune.state import MANIFEST, RECIPE_RNG_KEY, read_record, training_digest, write_record

FINGERPRINT = "snaketune_fingerprint.json"
# Every attempt of the run's training (this job's and earlier ones'), beside the checkpoints.
ATTEMPTS = "snaketune_attempts.json"
# Keys that may differ between a run's attempts without making its checkpoints another
# training's: the resume switches, and how and where metrics are logged (turning W&B on or off).
RESUME_KEYS = ("resume_from_checkpoint", "max_steps_per_epoch", "metric_logger", "log_every_n_steps")
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
    missing = [path for path in (config["checkpointer"]["checkpoint_dir"], config["dataset"]["data_files"]) if not Path(path).exists()]
    if missing:
        raise FinetuneError("missing on this machine: " + ", ".join(missing))


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


def resume_point(output_dir: Path, epochs: int) -> dict | None:
    """Where a previous attempt can be continued from, ``{"epoch": N, "rng_restored": bool}``
    (the last complete epoch, and whether its recipe state holds the RNG states an exact resume
    needs), or None to start fresh.

    torchtune resumes the adapter of the highest ``epoch_N`` directory with the optimizer and
    dataloader state of ``recipe_state.pt``: both must describe the same epoch, so epoch
    directories newer than the recipe state (a save killed half-way) are set aside first.
    """
    state = read_recipe_state(output_dir / "recipe_state" / "recipe_state.pt") or {}
    epochs_run = int(state.get("epochs_run", 0))
    if not epochs_run or epochs_run >= epochs or epochs_run - 1 not in complete_epochs(output_dir):
        return None
    for path in output_dir.glob("epoch_*"):
        suffix = path.name.removeprefix("epoch_")
        if suffix.isdigit() and int(suffix) >= epochs_run:
            _quarantine(path)
    print(f"snaketune: resuming from epoch_{epochs_run - 1} (recipe_state present)", flush=True)
    return {"epoch": epochs_run - 1, "rng_restored": RECIPE_RNG_KEY in state}


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


def run_training(command: list[str], env: dict) -> tuple[int, str]:
    """Run ``tune run``, passing its output through. Returns its exit code and what went
    wrong: "" , ``OUT_OF_MEMORY_FAILURE`` or ``DIVERGED`` (stopped at the first NaN/Inf loss:
    torchtune would train on, and save, garbage)."""
    kills_before = _cgroup_oom_kills()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tail = b""
    diverged = False
    while chunk := os.read(process.stdout.fileno(), 65536):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        tail = (tail + chunk)[-65536:]
        if not diverged and NON_FINITE_LOSS.search(tail):
            diverged = True
            print(f"\nsnaketune: {DIVERGED}: stopping the training", flush=True)
            process.terminate()
    code = process.wait()
    if diverged:
        return code or 1, DIVERGED
    if code == 0:
        return 0, ""
    kills_after = _cgroup_oom_kills()
    killed = kills_before is not None and kills_after is not None and kills_after > kills_before
    return code, OUT_OF_MEMORY_FAILURE if killed or OUT_OF_MEMORY.search(tail) else ""


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
    }
    faults.reached("finetune:before-manifest", run_dir.name)
    write_record(run_dir / MANIFEST, manifest)
    faults.reached("finetune:after-manifest", run_dir.name)
    return manifest


def record_attempt(output_dir: Path, attempt: dict) -> None:
    """Append one training attempt to the record beside the checkpoints."""
    path = output_dir / ATTEMPTS
    write_record(path, {"attempts": [*(read_record(path) or {}).get("attempts", []), attempt]})


def finish_attempt(output_dir: Path, exit_code: int) -> None:
    """Record that the latest attempt ended (an attempt killed with its job never gets this)."""
    path = output_dir / ATTEMPTS
    attempts = (read_record(path) or {}).get("attempts", [])
    attempts[-1].update(finished=time.strftime("%Y-%m-%d %H:%M:%S"), exit_code=exit_code)
    write_record(path, {"attempts": attempts})


def exactness(attempts: list[dict]) -> tuple[bool, list[str]]:
    """Whether the training equals an uninterrupted one on the same device: every resume since
    the attempt that started it restored the RNG states and used its batch size, gradient
    accumulation and thread count. With the reasons when not (e.g. an OOM relaunch)."""
    starts = [index for index, attempt in enumerate(attempts) if attempt.get("resumed_from") is None]
    current = attempts[starts[-1] :] if starts else attempts
    reasons = []
    for attempt in current[1:]:
        where = f"the resume from epoch_{attempt.get('resumed_from')}"
        if not attempt.get("rng_restored"):
            reasons.append(f"{where} had no saved RNG states (a recipe state of an older snaketune)")
        for key, label in (("batch_size", "batch size"), ("gradient_accumulation_steps", "gradient accumulation"), ("threads", "threads")):
            if attempt.get(key) != current[0].get(key):
                reasons.append(f"{where} used {label} {attempt.get(key)}, not {current[0].get(key)}")
    return not reasons, reasons


def _train(output_dir: Path, config: dict, command: list[str]) -> tuple[int, dict]:
    """Train (or resume) until all epochs are saved, recovering from out-of-memory failures.

    Returns the exit code and what the training used (batch size, accumulation, OOM retries).
    """
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", HF_HUB_OFFLINE="1")
    epochs = int(config["epochs"])
    batch_size, accumulation = int(config["batch_size"]), int(config["gradient_accumulation_steps"])
    used = {"batch_size": batch_size, "gradient_accumulation_steps": accumulation, "oom_retries": 0}
    retry = 0
    while True:
        resume = resume_point(output_dir, epochs)
        if resume is None and any(output_dir.glob("epoch_*")):
            _move_aside(output_dir, "the saved epochs cannot be resumed from (no readable recipe state)")
            prepare(output_dir, config)
        batch = {"batch_size": batch_size, "gradient_accumulation_steps": accumulation}
        overrides = [f"max_steps_per_epoch={steps_per_epoch({**config, **batch}, _processes(command))}"]
        if resume is not None:
            overrides.append("resume_from_checkpoint=True")
        if retry:
            overrides += [f"{key}={value}" for key, value in batch.items()]
        # each attempt its own offline W&B run, its id recorded before it starts (snaketune.wandb_runs)
        wandb_run = wandb_runs.attempt_run(config, env)
        record_attempt(
            output_dir,
            {
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "slurm_job": os.environ.get("SLURM_JOB_ID"),
                "resumed_from": None if resume is None else resume["epoch"],
                "rng_restored": None if resume is None else resume["rng_restored"],
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
        code, problem = run_training(full, wandb_runs.attempt_environment(env, wandb_run))
        finish_attempt(output_dir, code)
        if code == 0:
            return 0, used
        out_of_memory = problem == OUT_OF_MEMORY_FAILURE
        print(f"snaketune: tune run exited with {code}" + (f" ({problem})" if problem else ""), file=sys.stderr, flush=True)
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
    tee = subprocess.Popen(["tee", "-a", str(history)], stdin=subprocess.PIPE, stdout=saved[0])
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
        prepare(output_dir, config)
        faults.reached("finetune:before-training", run_dir.name)
        used = {}
        if complete_epochs(output_dir) == list(range(epochs)):
            print(f"snaketune: all {epochs} epoch checkpoints are already complete in {output_dir}; not retraining", flush=True)
        else:
            code, used = _train(output_dir, config, command)
            if code != 0:
                return code
        # what the DAG compares: the settings of the run's setup this training was rendered from
        setup = yaml.safe_load((run_dir / "setup_finetune.yaml").read_text())
        write_manifest(run_dir, output_dir, epochs, {"started": started, "training_digest": training_digest(setup), **used})
    print("snaketune: finetune finished", flush=True)
    return 0
