"""``snaketune status``: where every run of an experiment stands, why it failed, what to do.

Everything is read from files the workflow and its jobs leave behind, never changed:
- the plan (the summary, parsed as the workflow parses it) says what should exist;
- ``<run>/finetune_manifest.json`` marks a finished training, the lock beside the
  checkpoint directory a running one, ``<run>/logs/finetune.log`` (one block per attempt)
  the cause of a failure;
- torchtune's metric logs (``<checkpoints>/logs/log_*.txt``) give progress and loss;
- on SLURM, the executor plugin's logs (``.snakemake/slurm_logs/rule_<rule>/<wildcards>/<job
  id>.log``) give the job ids, and ``sacct`` (or ``squeue``) their state and times;
- evaluation logs give the scores;
- the attempts record beside the checkpoints (``snaketune_attempts.json``) and wandb's own run
  folders give each attempt's W&B run, whether it is synced, and zombies (snaketune.wandb_runs).
So it also works while a workflow is running, locally or on SLURM.
"""

from __future__ import annotations

import fcntl
import json
import math
import re
import shlex
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from snaketune import step_state
from snaketune.evaluate import RECORD as EVALUATION_RECORD
from snaketune.finetune import ATTEMPT_HEADER, ATTEMPTS, DIVERGED, MANIFEST, OUT_OF_MEMORY_TEXT, complete_epochs, history
from snaketune.plan import ExperimentPlan, RunPlan
from snaketune.render import write_atomic
from snaketune.scaffold import eval_log_name
from snaketune.state import EPOCH_LOSSES, SUCCESS, read_record, sidecar_path
from snaketune.validation import overfitting_note
from snaketune.wandb_runs import WandbRun, training_runs, zombie
from snaketune.workflow import evaluation_rerun_reason, training_rerun_reason

FAILED_STATES = ("failed", "preempted", "timeout", "oom", "cancelled")
# SLURM job states (sacct/squeue) -> our state; COMPLETED is decided by the manifest.
SLURM_STATES = {
    "PENDING": "queued",
    "REQUEUED": "queued",
    "REQUEUE_HOLD": "queued",
    "CONFIGURING": "running",
    "RUNNING": "running",
    "COMPLETING": "running",
    "PREEMPTED": "preempted",
    "TIMEOUT": "timeout",
    "DEADLINE": "timeout",
    "OUT_OF_MEMORY": "oom",
    "CANCELLED": "cancelled",
    "FAILED": "failed",
    "NODE_FAIL": "failed",
    "BOOT_FAIL": "failed",
}
# Failure causes, first match wins: (cause, pattern in the job's log, what to change).
CAUSES = [
    ("NaN loss", re.escape(DIVERGED), "lower the learning rate (the run diverged); retraining as it is diverges again"),
    ("out of memory", OUT_OF_MEMORY_TEXT, "lower the Batch size or raise resources.finetune.mem_mb (or use a bigger GPU)"),
    ("preempted", r"DUE TO PREEMPTION", "nothing to change"),
    ("timeout", r"DUE TO TIME LIMIT", "raise resources.<stage>.time in config/config.yaml"),
    ("cancelled", r"CANCELLED AT", "nothing to change if the cancellation was intended"),
    ("requeue limit", r"training\.max_requeues", "raise training.max_requeues (or resources.finetune.time)"),
    (
        "time limit too short to save",
        r"before the time limit: not requeueing",
        "raise resources.finetune.time, or lower training.requeue_margin_minutes",
    ),
    ("stopped", r"snaketune: stopped by SIG\w+", "nothing to change"),
    (
        "missing dependency",
        r"ModuleNotFoundError|No module named|command not found|ImportError",
        "install the package into the jobs' environment (config: environment)",
    ),
    (
        "config error",
        r"InstantiationError|ConfigAttributeError|ConfigKeyError|unexpected keyword argument|Missing key|omegaconf\.errors|Unsupported recipe",
        "fix the setting in experiment_summary.md or config/config.yaml (finetune.yaml is rendered from them)",
    ),
    (
        "data loading error",
        r"missing on this machine|DatasetGenerationError|JSONDecodeError|datasets\.exceptions|FileNotFoundError|pyarrow\.lib\.ArrowInvalid",
        "check the dataset (or model) path and its format",
    ),
]
EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt|Exit)\b.*$", re.MULTILINE)
MAX_STEPS = re.compile(r"max_steps_per_epoch=(\d+)")


@dataclass
class EvaluationStatus:
    run: str
    run_name: str
    task: str
    checkpoint: str
    state: str = "pending"
    job_id: str = ""
    completed: str = ""
    score: float | None = None
    samples: int | None = None
    cause: str = ""
    detail: str = ""
    flags: list[str] = field(default_factory=list)

    @property
    def epoch(self) -> str:
        return self.checkpoint.removeprefix("epoch_") if self.checkpoint.startswith("epoch_") else self.checkpoint


@dataclass
class RunStatus:
    run: str
    run_name: str
    type: str
    state: str = "pending"
    job_id: str = ""
    started: str = ""
    completed: str = ""
    elapsed: str = ""
    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    total_steps: int | None = None
    progress: float | None = None
    last_loss: float | None = None
    loss_trend: str = ""
    # the last validation loss logged and its trend against the one before (validating runs)
    last_val_loss: float | None = None
    val_loss_trend: str = ""
    oom_retries: int = 0
    # from its attempts record: where the latest attempt resumed, how often SLURM started the
    # job again (own_requeues: by snaketune before the time limit), what each interruption lost
    resumed: str = ""
    requeues: int = 0
    own_requeues: int = 0
    interruptions: list[dict] = field(default_factory=list)
    cause: str = ""
    detail: str = ""
    resumable: str = ""
    action: str = ""
    flags: list[str] = field(default_factory=list)
    evaluations: list[EvaluationStatus] = field(default_factory=list)
    wandb_runs: list[WandbRun] = field(default_factory=list)

    @property
    def evals_done(self) -> int:
        return sum(e.state == "completed" for e in self.evaluations)

    @property
    def latest_score(self) -> float | None:
        scored = [e for e in self.evaluations if e.score is not None]
        return scored[-1].score if scored else None


@dataclass
class ExperimentStatus:
    experiment: str
    summary: str
    runs: list[RunStatus]
    checkpoint_bytes: int
    on_slurm: bool

    def totals(self) -> dict:
        states: dict[str, int] = {}
        for run in self.runs:
            if run.type == "fine-tuned":
                states[run.state] = states.get(run.state, 0) + 1
        evaluations = [e for run in self.runs for e in run.evaluations]
        return {
            "fine_tuning": states,
            "evaluations_done": sum(e.state == "completed" for e in evaluations),
            "evaluations_planned": len(evaluations),
            "evaluations_failed": sum(e.state in FAILED_STATES for e in evaluations),
            "red_flags": sum(len(run.flags) + sum(len(e.flags) for e in run.evaluations) for run in self.runs),
            "wandb_unsynced": sum(bool(w.directory) and not w.synced for run in self.runs for w in run.wandb_runs),
            "checkpoint_disk": human_bytes(self.checkpoint_bytes),
        }


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{count} B"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def last_attempt(log_text: str) -> str:
    """The part of an appended job log written by its latest attempt."""
    start = log_text.rfind(ATTEMPT_HEADER)
    return log_text[start:] if start >= 0 else log_text


def diagnose(text: str) -> tuple[str, str, str]:
    """(cause, the error's last line, what to change) of a failed job's log text."""
    exceptions = EXCEPTION_LINE.findall(text)
    detail = exceptions[-1].strip()[:300] if exceptions else ""
    for cause, pattern, fix in CAUSES:
        match = re.search(pattern, text, re.IGNORECASE if cause == "out of memory" else 0)
        if match:
            return cause, detail or _line_around(text, match.start()), fix
    if detail:
        return "python exception", detail, "read the log"
    return "", "", ""


def _line_around(text: str, position: int) -> str:
    start = text.rfind("\n", 0, position) + 1
    end = text.find("\n", position)
    return text[start : end if end >= 0 else None].strip()[:300]


def loss_trend(losses: list[float]) -> str:
    """↓, → or ↑: the mean of the last quarter of the losses against the quarter before."""
    finite = [loss for loss in losses if math.isfinite(loss)]
    if len(finite) < 4:
        return ""
    quarter = max(1, len(finite) // 4)
    recent = sum(finite[-quarter:]) / quarter
    before = sum(finite[-2 * quarter : -quarter]) / quarter
    if recent < before * 0.95:
        return "↓"
    if recent > before * 1.05:
        return "↑"
    return "→"


def val_loss_trend(losses: list[float]) -> str:
    """↓, → or ↑: the last validation loss against the one before (a validation pass covers the
    whole split, so two passes compare directly)."""
    finite = [loss for loss in losses if math.isfinite(loss)]
    if len(finite) < 2:
        return ""
    if finite[-1] < finite[-2] * 0.99:
        return "↓"
    if finite[-1] > finite[-2] * 1.01:
        return "↑"
    return "→"


def lock_held(output_dir: Path) -> bool:
    """Whether a finetune job holds the run's lock (it does for as long as it trains)."""
    path = output_dir.with_name(f".{output_dir.name}.lock")
    if not path.is_file():
        return False
    with open(path) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
    return False


def slurm_log(experiment_dir: Path, rule: str, wildcards: str, job_id: str = "") -> Path:
    """The executor plugin's log of a job (its folder without a job id)."""
    folder = experiment_dir / ".snakemake" / "slurm_logs" / f"rule_{rule}" / wildcards
    return folder / f"{job_id}.log" if job_id else folder


def slurm_job_ids(experiment_dir: Path, rule: str, wildcards: str) -> list[str]:
    """The executor plugin's job ids of one job, oldest first."""
    return sorted((p.stem for p in slurm_log(experiment_dir, rule, wildcards).glob("*.log") if p.stem.isdigit()), key=int)


def query_slurm(job_ids: list[str]) -> dict[str, dict]:
    """State, start, end and elapsed time of SLURM jobs (sacct, else squeue); {} without SLURM."""
    if not job_ids:
        return {}
    if shutil.which("sacct"):
        command = ["sacct", "-X", "-n", "-P", "-o", "JobIDRaw,State,Start,End,Elapsed", "-j", ",".join(job_ids)]
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.TimeoutExpired):
            out = ""
        jobs = {}
        for line in out.splitlines():
            parts = line.split("|")
            if len(parts) == 5:
                job, state, start, end, elapsed = parts
                jobs[job] = {"state": state.split()[0], "start": start, "end": end, "elapsed": elapsed}
        if jobs:
            return jobs
    if shutil.which("squeue"):
        command = ["squeue", "-h", "-o", "%i|%T|%S|%M", "-j", ",".join(job_ids)]
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.TimeoutExpired):
            return {}
        return {
            job: {"state": state, "start": start, "end": "", "elapsed": elapsed}
            for job, state, start, elapsed in (line.split("|") for line in out.splitlines() if line.count("|") == 3)
        }
    return {}


def _slurm_time(value: str) -> str:
    return "" if value in ("", "Unknown", "None", "N/A") else value.replace("T", " ")


def _elapsed(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def rerun_command(summary: Path, on_slurm: bool) -> str:
    profile = "--profile profiles/slurm " if on_slurm else ""
    return f"snakemake {profile}--config experiment={shlex.quote(str(summary))}"


def _resumable(output_dir: Path, epochs: int) -> str:
    done = complete_epochs(output_dir) if output_dir.is_dir() else []
    if done == list(range(epochs)):
        return "yes: all epochs are saved, the rerun only checks them"
    saved = step_state.record(output_dir) if output_dir.is_dir() else None
    if saved and saved.get("epoch", -1) >= len(done):
        return f"yes: from the step state at step {saved['global_step']} (epoch {saved['epoch'] + 1} of {epochs})"
    if done and (output_dir / "recipe_state" / "recipe_state.pt").is_file():
        return f"yes: from epoch_{done[-1]} ({len(done)} of {epochs} epochs saved)"
    return "no: nothing saved yet, it restarts from step 0"


def _training_status(plan: ExperimentPlan, run: RunPlan, slurm: dict[str, dict], on_slurm: bool) -> RunStatus:
    directory = plan.directory
    setup = run.setup
    status = RunStatus(run=run.run_dir, run_name=run.name, type=run.type)
    training = setup["training"]
    output_dir = Path(training["output_dir"])
    status.epochs = int(training["epochs"])
    manifest_path = directory / run.run_dir / MANIFEST
    manifest = json.loads(_read(manifest_path) or "{}") if manifest_path.is_file() else None
    log_path = directory / run.run_dir / "logs" / "finetune.log"
    attempt = last_attempt(_read(log_path))
    header = re.search(re.escape(ATTEMPT_HEADER) + r" (\S+ \S+)", attempt)

    jobs = slurm_job_ids(directory, "finetune", run.run_dir)
    job = slurm.get(jobs[-1], {}) if jobs else {}
    status.job_id = jobs[-1] if jobs else ""
    slurm_state = SLURM_STATES.get(job.get("state", ""), "")

    if lock_held(output_dir):
        status.state = "running"
        status.job_id = status.job_id or _read(output_dir.with_name(f".{output_dir.name}.lock")).strip()
    elif slurm_state in ("queued", "running"):
        status.state = slurm_state
    elif manifest is not None:
        outdated = training_rerun_reason(plan, run)
        status.state = "outdated" if outdated else "completed"
        if outdated:
            status.cause = f"outdated: {outdated} (the next run retrains it)"
        if manifest.get("resumes_exact") is False:
            status.flags.append("resumed inexactly: " + "; ".join(manifest.get("inexact_resumes") or ["see the manifest"]))
    elif slurm_state:
        status.state = slurm_state
    elif job.get("state") == "COMPLETED" or attempt.strip():
        status.state = "failed"  # it ran, and neither finished nor runs now

    status.started = _slurm_time(job.get("start", "")) or (manifest or {}).get("started", "") or (header.group(1) if header else "")
    status.completed = (manifest or {}).get("finished", "") or _slurm_time(job.get("end", ""))
    if job.get("elapsed"):
        status.elapsed = job["elapsed"]
    elif status.started and status.state != "pending":
        # a failed attempt ended when its log was last written
        try:
            start = time.mktime(time.strptime(status.started, "%Y-%m-%d %H:%M:%S"))
            if status.completed:
                end = time.mktime(time.strptime(status.completed, "%Y-%m-%d %H:%M:%S"))
            else:
                end = time.time() if status.state == "running" else log_path.stat().st_mtime
            status.elapsed = _elapsed(end - start)
        except ValueError:
            pass
    status.oom_retries = int((manifest or {}).get("oom_retries", 0)) or len(
        re.findall(r"snaketune: out of memory with batch size", attempt)
    )

    _progress(status, output_dir, attempt, manifest is not None)
    attempts = (read_record(output_dir / ATTEMPTS) or {}).get("attempts", [])
    _attempts(status, attempts)

    if status.state in FAILED_STATES:
        cause, detail, fix = diagnose(attempt + "\n" + _read(slurm_log(directory, "finetune", run.run_dir, status.job_id)))
        cause = {"preempted": "preempted", "timeout": "timeout", "oom": "out of memory", "cancelled": "cancelled"}.get(status.state, cause)
        if not cause:
            exited = re.search(r"tune run exited with (-?\d+)", attempt)
            cause = f"exited with code {exited.group(1)}" if exited else "interrupted (killed before it finished, no error in its log)"
        status.cause, status.detail = cause, detail
        if status.state == "failed" and cause == "out of memory":
            status.state = "oom"
        status.resumable = (
            "no: it diverged; a changed learning rate retrains it from scratch"
            if cause == "NaN loss"
            else _resumable(output_dir, status.epochs)
        )
        command = rerun_command(plan.experiment.path, on_slurm)
        status.action = f"{fix}, then: {command}" if fix and fix != "nothing to change" else command
    if job.get("state") == "COMPLETED" and manifest is None and status.state != "running":
        status.flags.append(f"SLURM job {status.job_id} COMPLETED but the training did not finish its epochs (no {MANIFEST})")
    _wandb(status, output_dir, attempts)
    return status


def _attempts(status: RunStatus, attempts: list[dict]) -> None:
    """Resume point, requeues and lost work from the attempts record; a red flag when the
    latest interruptions came before the training managed to save anything."""
    seen = history(attempts)
    status.resumed, status.requeues, status.own_requeues = seen["resumed"], seen["requeues"], seen["own_requeues"]
    status.interruptions = seen["interruptions"]
    if seen["unsaved_streak"] >= 2 and status.state != "completed":
        status.flags.append(
            f"interrupted {seen['unsaved_streak']} times in a row before saving any state: save more often "
            "(training.save_every_minutes / save_every_steps) or give it longer before the kill (GraceTime, "
            "training.requeue_margin_minutes, resources.finetune.time)"
        )


def interruption_notes(run: RunStatus) -> list[str]:
    notes = [run.resumed] if run.resumed else []
    if run.requeues:
        notes.append(f"requeued x{run.requeues}" + (f" ({run.own_requeues} before the time limit)" if run.own_requeues else ""))
    if run.interruptions:
        lost = ", ".join(
            f"{i['steps_lost']} steps" + ("" if i["seconds_lost"] is None else f"/{_elapsed(i['seconds_lost'])}") for i in run.interruptions
        )
        notes.append(f"lost per interruption: {lost}")
    return notes


def _wandb(status: RunStatus, output_dir: Path, attempts: list[dict]) -> None:
    """The training's W&B runs, and the zombie flag: its newest one was left behind by a dead job."""
    status.wandb_runs = training_runs(output_dir, attempts)
    dead = zombie(status.wandb_runs, status.state)
    if dead:
        status.flags.append(
            f"W&B zombie: offline run {dead.run_id} (attempt {dead.attempt}) has no finish record and no job trains the run"
            " (its process died: rerun to resume; wandb-sync then uploads it)"
        )


def _progress(status: RunStatus, output_dir: Path, attempt: str, finished: bool) -> None:
    """Epoch, step, loss and the red flags that the training's own logs reveal."""
    from snaketune.results import read_training_log

    metrics = read_training_log(output_dir / "logs")
    # every line of the training recipe has a loss: a missing value is a NaN it logged
    losses = metrics[["step", "loss"]] if "loss" in metrics else metrics.iloc[0:0]
    per_epoch = [int(n) for n in MAX_STEPS.findall(attempt)]
    epochs = status.epochs or 0
    if per_epoch:
        status.total_steps = per_epoch[-1] * epochs
    saved = complete_epochs(output_dir) if output_dir.is_dir() else []
    status.epoch = len(saved)
    if len(metrics):
        status.step = int(metrics["step"].iloc[-1])
    if len(losses):
        status.last_loss = float(losses["loss"].iloc[-1])
        status.loss_trend = loss_trend(losses["loss"].tolist())
        bad = losses[~losses["loss"].map(math.isfinite)]
        if len(bad):
            status.flags.append(f"NaN/Inf loss from step {int(bad['step'].iloc[0])}: the checkpoints are not usable")
    if "val_loss" in metrics and metrics["val_loss"].notna().any():
        validated = metrics["val_loss"].dropna().tolist()
        status.last_val_loss = float(validated[-1])
        status.val_loss_trend = val_loss_trend(validated)
    # the epochs' validation losses (the recipe's record, also while the run trains)
    note = overfitting_note(read_record(output_dir / EPOCH_LOSSES))
    if note:
        status.flags.append(note)
    if status.total_steps:
        status.progress = min(1.0, (status.step or 0) / status.total_steps)
        if status.step and per_epoch[-1]:
            status.epoch = max(status.epoch, min(epochs, (status.step - 1) // per_epoch[-1] + (0 if finished else 1)))
    if finished:
        status.progress = status.progress if status.total_steps else 1.0
        if not len(metrics):
            status.flags.append("completed without a single logged training step: it trained nothing")
        elif status.total_steps and (status.step or 0) < status.total_steps:
            status.flags.append(f"completed after {status.step} of {status.total_steps} steps: it did not train all its epochs")


def _evaluation_status(
    plan: ExperimentPlan, run: RunPlan, task: str, checkpoint: str, slurm: dict[str, dict], scores: bool
) -> EvaluationStatus:
    from snaketune.results import evaluation_row

    directory = plan.directory
    status = EvaluationStatus(run=run.run_dir, run_name=run.name, task=task, checkpoint=checkpoint)
    log = directory / run.run_dir / "eval" / "logs" / eval_log_name(task, checkpoint)
    # one evaluation job per run evaluates all its pairs
    job_log = directory / run.run_dir / "logs" / "evaluate.log"
    record = directory / run.run_dir / EVALUATION_RECORD
    jobs = slurm_job_ids(directory, "evaluate", run.run_dir)
    job = slurm.get(jobs[-1], {}) if jobs else {}
    status.job_id = jobs[-1] if jobs else ""
    slurm_state = SLURM_STATES.get(job.get("state", ""), "")
    if log.is_file():
        status.completed = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(log.stat().st_mtime))
        outdated = evaluation_rerun_reason(plan, run, task, checkpoint)
        if outdated:
            failure = (read_record(sidecar_path(log)) or {}).get("status") not in (None, SUCCESS)
            status.state = "failed" if failure else "outdated"
            status.cause = outdated if failure else f"outdated: {outdated} (the next run redoes it)"
            return status
        status.state = "completed"
        if not scores:
            return status
        try:
            row, _, _ = evaluation_row(log)
        except Exception as error:  # a log inspect-ai cannot read is a finding, not a crash
            status.flags.append(f"unreadable evaluation log ({type(error).__name__})")
            return status
        status.samples = int(row.get("samples") or 0)
        score = row.get("accuracy")
        status.score = None if score is None or (isinstance(score, float) and math.isnan(score)) else float(score)
        if status.samples == 0:
            status.flags.append("evaluated 0 samples")
        return status
    sidecar = read_record(sidecar_path(log)) or {}
    if sidecar.get("status") not in (None, SUCCESS):
        status.state, status.cause, status.detail = "failed", "evaluation failed", sidecar.get("error") or ""
    elif slurm_state in ("queued", "running") or (not jobs and _incomplete(directory, record)):
        status.state = slurm_state or "running"
    elif (slurm_state or job_log.is_file()) and not record.is_file():
        text = _read(job_log) + "\n" + _read(slurm_log(directory, "evaluate", run.run_dir, status.job_id))
        cause, detail, _ = diagnose(text)
        status.state = slurm_state or ("oom" if cause == "out of memory" else "failed")
        status.cause = cause or "interrupted (no error in its log)"
        status.detail = detail
    return status


def _incomplete(directory: Path, output: Path) -> bool:
    """Snakemake's marker of a job that started and has not finished (running, or killed)."""
    import base64

    relative = output.relative_to(directory).as_posix()
    marker = base64.urlsafe_b64encode(relative.encode()).decode()  # as Snakemake names them
    return (directory / ".snakemake" / "incomplete" / marker).exists()


def _checkpoint_bytes(plan: ExperimentPlan) -> int:
    bases = {Path(run.setup["training"]["output_dir"]).parent for run in plan.runs if run.fine_tuned}
    total = 0
    for base in bases:
        for folder in base.glob("ck-out-*"):
            total += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    return total


def load(experiment: Path, configfiles: list[Path] = (), scores: bool = True) -> ExperimentStatus:
    """The status of the experiment in a directory (or of a summary file)."""
    from snaketune.workflow import load_plan, workflow_config

    summary = experiment / "experiment_summary.md" if experiment.is_dir() else experiment
    return collect(load_plan(summary.absolute(), workflow_config(configfiles)), scores)


def collect(plan: ExperimentPlan, scores: bool = True) -> ExperimentStatus:
    """The status of every run and evaluation of a planned experiment (``scores=False`` skips
    reading the evaluation logs: inspect-ai takes seconds to import)."""
    directory = plan.directory
    on_slurm = (directory / ".snakemake" / "slurm_logs").is_dir()
    ids = []
    if on_slurm:
        for run in plan.runs:
            ids += slurm_job_ids(directory, "finetune", run.run_dir)[-1:]
            if run.evaluations:
                ids += slurm_job_ids(directory, "evaluate", run.run_dir)[-1:]
    slurm = query_slurm(ids)
    runs = []
    for run in plan.runs:
        status = (
            _training_status(plan, run, slurm, on_slurm) if run.fine_tuned else RunStatus(run.run_dir, run.name, run.type, state="control")
        )
        status.evaluations = [_evaluation_status(plan, run, e.task, e.checkpoint, slurm, scores) for e in run.evaluations]
        runs.append(status)
    return ExperimentStatus(
        experiment=plan.experiment.name,
        summary=str(plan.experiment.path),
        runs=runs,
        checkpoint_bytes=_checkpoint_bytes(plan),
        on_slurm=on_slurm,
    )


# ---- presentation ----------------------------------------------------------------------


def _cell(value) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if math.isfinite(value) else str(value)
    return str(value)


def wandb_cell(runs: list[WandbRun], links: bool = False) -> str:
    """A training's W&B runs: each id (a link in Markdown when its URL is known) and whether it is synced."""
    cells = []
    for run in runs:
        name = f"[{run.run_id}]({run.url})" if links and run.url else run.run_id
        cells.append(f"{name} {'synced' if run.synced else 'offline' if run.directory else 'not started'}")
    return ", ".join(cells)


def table_rows(status: ExperimentStatus, links: bool = False) -> list[dict[str, str]]:
    rows = []
    wandb_column = any(run.wandb_runs for run in status.runs)
    for run in status.runs:
        progress = ""
        if run.type == "fine-tuned":
            progress = f"{run.epoch or 0}/{run.epochs}"
            if run.step is not None:
                progress += f" step {run.step}" + (f"/{run.total_steps}" if run.total_steps else "")
            if run.progress is not None:
                progress += f" ({run.progress:.0%})"
        loss = "" if run.last_loss is None else f"{_cell(run.last_loss)} {run.loss_trend}".strip()
        if run.last_val_loss is not None:
            loss = f"{loss or '-'}, val {_cell(run.last_val_loss)} {run.val_loss_trend}".strip()
        notes = [run.cause] if run.cause else []
        if run.oom_retries:
            notes.append(f"OOM recovered x{run.oom_retries}" if run.state == "completed" else f"{run.oom_retries} OOM retries")
        notes += interruption_notes(run)
        notes += run.flags + [flag for e in run.evaluations for flag in e.flags]
        notes += [
            f"eval {e.task}/{e.checkpoint}: {e.state}" + (f" ({e.cause})" if e.cause else "")
            for e in run.evaluations
            if e.state in (*FAILED_STATES, "outdated")
        ]
        rows.append(
            {
                "run": run.run,
                "state": run.state,
                "job": run.job_id or "-",
                "elapsed": run.elapsed or "-",
                "progress": progress or "-",
                "loss": loss or "-",
                "evals": f"{run.evals_done}/{len(run.evaluations)}",
                "score": _cell(run.latest_score),
                **({"wandb": wandb_cell(run.wandb_runs, links) or "-"} if wandb_column else {}),
                "notes": "; ".join(notes) or "-",
            }
        )
    return rows


def format_text(status: ExperimentStatus) -> str:
    rows = table_rows(status)
    lines = [f"Experiment {status.experiment} ({status.summary})", ""]
    if rows:
        widths = {key: max(len(key), *(len(row[key]) for row in rows)) for key in rows[0]}
        lines.append("  ".join(key.ljust(widths[key]) for key in widths).rstrip())
        lines += ["  ".join(row[key].ljust(widths[key]) for key in widths).rstrip() for row in rows]
    failures = [run for run in status.runs if run.state in FAILED_STATES]
    if failures:
        lines += ["", "Failures:"]
        for run in failures:
            lines.append(f"  {run.run}: {run.state}: {run.cause}" + (f" — {run.detail}" if run.detail else ""))
            lines.append(f"    resumable: {run.resumable}")
            lines.append(f"    do: {run.action}")
    urls = [(run.run, w) for run in status.runs for w in run.wandb_runs if w.url]
    if urls:
        lines += ["", "W&B:"] + [f"  {name}: {w.url}" + ("" if w.synced else " (after its sync)") for name, w in urls]
    lines += ["", totals_line(status)]
    return "\n".join(lines)


def totals_line(status: ExperimentStatus) -> str:
    totals = status.totals()
    training = ", ".join(f"{count} {state}" for state, count in sorted(totals["fine_tuning"].items())) or "none"
    return (
        f"Fine-tuning: {training}. Evaluations: {totals['evaluations_done']}/{totals['evaluations_planned']} done"
        f"{', ' + str(totals['evaluations_failed']) + ' failed' if totals['evaluations_failed'] else ''}. "
        f"Red flags: {totals['red_flags']}. Checkpoints on disk: {totals['checkpoint_disk']}."
        + (f" W&B: {totals['wandb_unsynced']} offline run(s) not synced yet (snaketune wandb-sync)." if totals["wandb_unsynced"] else "")
    )


def format_markdown(status: ExperimentStatus) -> str:
    from snaketune.results import markdown_table

    rows = table_rows(status, links=True)
    header = list(rows[0]) if rows else ["run", "state"]
    return f"{markdown_table(header, [list(row.values()) for row in rows])}\n\n{totals_line(status)}\n"


def format_json(status: ExperimentStatus) -> str:
    data = asdict(status)
    data["totals"] = status.totals()
    for run, raw in zip(status.runs, data["runs"], strict=True):
        raw["evals_done"] = run.evals_done
        raw["latest_score"] = run.latest_score
    return json.dumps(data, indent=1, default=str) + "\n"


# ---- the summary's Status tables -------------------------------------------------------

STATUS_HEADING = re.compile(r"^##[ \t]+Status[ \t]*$", re.MULTILINE)
NEXT_SECTION = re.compile(r"^##[ \t]+\S", re.MULTILINE)


def status_section(status: ExperimentStatus) -> str:
    from snaketune.results import markdown_table

    training = []
    evaluations = []
    for run in status.runs:
        if run.type == "fine-tuned":
            notes = [run.cause] if run.cause else []
            if run.oom_retries:
                notes.append(f"OOM retries: {run.oom_retries}")
            notes += interruption_notes(run)
            if run.resumable and run.state in FAILED_STATES:
                notes.append(f"resumable: {run.resumable}")
            notes += run.flags
            training.append([run.run_name, run.state, run.job_id or "-", run.started or "-", run.completed or "-", "; ".join(notes) or "-"])
        for e in run.evaluations:
            notes = [f"accuracy {e.score:.3g} ({e.samples} samples)"] if e.score is not None else []
            notes += [e.cause] if e.cause else []
            notes += e.flags
            evaluations.append([e.run_name, e.task, e.epoch, e.state, e.job_id or "-", e.completed or "-", "; ".join(notes) or "-"])
    return (
        "## Status\n\n"
        f"_Written by `snaketune status --write` at {time.strftime('%Y-%m-%d %H:%M:%S')}; the files decide what runs, not this table._\n\n"
        "### Fine-tuning\n\n"
        + markdown_table(["Run Name", "Status", "Job ID", "Started", "Completed", "Notes"], training)
        + "\n\n### Evaluations\n\n"
        + markdown_table(["Run Name", "Task", "Epoch", "Status", "Job ID", "Completed", "Notes"], evaluations)
        + "\n"
    )


def has_status_section(summary: Path) -> bool:
    return bool(STATUS_HEADING.search(_read(summary)))


def write_status_tables(summary: Path, status: ExperimentStatus) -> None:
    """Replace the summary's ``## Status`` section (or append one), touching nothing else."""
    text = summary.read_text()
    section = status_section(status)
    heading = STATUS_HEADING.search(text)
    if heading is None:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        following = NEXT_SECTION.search(text, heading.end())
        end = following.start() if following else len(text)
        text = text[: heading.start()] + section + ("\n" if following else "") + text[end:]
    write_atomic(summary, text)
