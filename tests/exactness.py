"""Resume exactness, as a reusable check: a training interrupted and resumed must equal the
same training run without interruption.

:func:`train` runs the recipe the way the finetune job does (``tune run
snaketune/resumable_recipe.py --config …``), directly, once per attempt, interrupting attempt *i*
at ``kills[i]``: a fault point (:mod:`snaketune.faults`) that SIGKILLs it, or a :class:`Stop`
(held at a point until the test sends it a signal, which makes it save a step state and exit).
Each next attempt resumes from what was saved, as the finetune job decides
(:func:`snaketune.finetune.resume_point`: an epoch checkpoint or a step state).
:func:`assert_same_training` compares two trainings: every epoch's adapter weights with
``torch.equal`` and every logged step's loss and learning rate exactly. The uninterrupted
reference of a config is made once per test session (the ``uninterrupted`` fixture in
``conftest.py``) with the same thread count and batch size.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from e2e_helpers import REPO, row, write_summary

TUNE = Path(sys.executable).parent / "tune"
RECIPE = "snaketune/resumable_recipe.py"
# torchtune's DiskLogger: "Step 12 | loss:0.38 lr:0.001 tokens_per_second_per_gpu:436.7 "
STEP_LINE = re.compile(r"^Step (\d+) \| loss:(\S+) lr:(\S+)")
# torchtune's progress bar in an attempt's output: "<epoch>|<step>|Loss: <loss>"
PROGRESS = re.compile(r"(\d+)\|(\d+)\|Loss: ")


@dataclass(frozen=True)
class Settings:
    """What a training of the tiny demo model is made of (the reference cache's key)."""

    epochs: int = 3
    steps_per_epoch: int = 5
    batch_size: int = 8
    lora_rank: int = 8
    lora_dropout: float = 0.1  # > 0: exactness needs the RNG states restored
    learning_rate: float = 1e-3
    threads: int = 1
    gradient_accumulation_steps: int = 1


@dataclass(frozen=True)
class Stop:
    """Hold the attempt at fault point ``point`` until it has got there, then send it ``signum``."""

    point: str
    signum: int = signal.SIGTERM


@dataclass
class Training:
    output_dir: Path
    exit_codes: list[int]
    # every "Step N" line of every attempt's metric log: (step, loss text, lr text)
    logged_steps: list[tuple[int, str, str]] = field(default_factory=list)
    # the optimizer steps each attempt reported, in order (its progress bar)
    attempt_steps: list[list[int]] = field(default_factory=list)
    # the tune-run overrides each attempt resumed with
    resumes: list[list[str]] = field(default_factory=list)

    def adapter(self, epoch: int) -> dict:
        from safetensors.torch import load_file

        folder = self.output_dir / f"epoch_{epoch}"
        safetensors = folder / "adapter_model.safetensors"
        if safetensors.is_file():
            return load_file(str(safetensors))
        import torch

        return torch.load(folder / "adapter_model.pt", map_location="cpu", weights_only=True)

    def losses(self) -> dict[int, tuple[str, str]]:
        return {step: (loss, lr) for step, loss, lr in self.logged_steps}

    def val_losses(self) -> dict[int, float]:
        """Step -> the validation loss logged in its metric-log record (steps that validated)."""
        from snaketune.results import read_training_log

        log = read_training_log(self.output_dir / "logs")
        if "val_loss" not in log:
            return {}
        return {int(row.step): float(row.val_loss) for row in log.dropna(subset=["val_loss"]).itertuples()}

    def epoch_losses(self) -> dict:
        """The recipe's per-epoch record of training and validation losses."""
        from snaketune.state import EPOCH_LOSSES

        return json.loads((self.output_dir / EPOCH_LOSSES).read_text())


def finetune_config(
    directory: Path, assets: Path, settings: Settings, policy: dict | None = None, wandb: dict | None = None, training: dict | None = None
) -> Path:
    """The finetune.yaml the workflow renders for one tiny-model run, with ``settings``, the
    policy keys ``policy`` (e.g. ``save_every_steps``), W&B on when ``wandb`` is a config
    ``wandb`` section, and the config's ``training`` defaults updated by ``training`` (e.g.
    ``{"validation": True}``: rendered as the workflow renders it, with its ``dataset_val``)."""
    from snaketune.parse import read_summary
    from snaketune.plan import plan_experiment
    from snaketune.render import dump_yaml, finetune_config
    from snaketune.workflow import workflow_config

    summary = write_summary(directory, assets, [row("only", settings.lora_rank, str(settings.learning_rate))], epochs=settings.epochs)
    workflow = workflow_config()
    workflow["wandb"].update(wandb or {})
    workflow["training"].update(training or {})
    (run,) = plan_experiment(read_summary(summary), workflow, {}).runs
    config = finetune_config(run.setup)
    output_dir = str(directory / "checkpoints")
    config.update(output_dir=output_dir, batch_size=settings.batch_size, max_steps_per_epoch=settings.steps_per_epoch)
    config.update(gradient_accumulation_steps=settings.gradient_accumulation_steps, **(policy or {}))
    config["model"]["lora_dropout"] = settings.lora_dropout
    config["checkpointer"]["output_dir"] = output_dir
    config["metric_logger"]["log_dir"] = f"{output_dir}/logs"
    if wandb:
        config["metric_logger"]["wandb"]["dir"] = output_dir
    path = directory / "finetune.yaml"
    path.write_text(dump_yaml(config))
    return path


def train(
    directory: Path,
    assets: Path,
    settings: Settings,
    kills: Sequence[str | Stop] = (),
    policy: dict | None = None,
    wandb: Sequence[dict | None] = (),
    training: dict | None = None,
) -> Training:
    """Train until done; attempt *i* (0-based) is interrupted at ``kills[i]``, the next one resumes.
    ``wandb[i]``: attempt *i* logs to W&B (offline) with this config ``wandb`` section (default: off).
    ``training``: config ``training`` defaults to change (e.g. validation on)."""
    from snaketune.finetune import resume_point

    output_dir = directory / "checkpoints"
    geometry = {
        "batch_size": settings.batch_size,
        "gradient_accumulation_steps": settings.gradient_accumulation_steps,
        "steps_per_epoch": settings.steps_per_epoch,
    }
    env = dict(os.environ, OMP_NUM_THREADS=str(settings.threads), HF_HUB_OFFLINE="1")
    env.pop("SNAKETUNE_FAULT", None)
    made = Training(output_dir, [])
    for attempt in range(len(kills) + 1):
        config = finetune_config(directory, assets, settings, policy, wandb[attempt] if attempt < len(wandb) else None, training)
        command = [str(TUNE), "run", RECIPE, "--config", str(config)]
        if attempt:
            resume = resume_point(output_dir, settings.epochs, geometry)
            assert resume is not None, f"attempt {attempt - 1} left nothing to resume from"
            command.append(resume["override"])
            made.resumes.append(command[5:])
        kill = kills[attempt] if attempt < len(kills) else None
        fault = f"{kill.point}@{directory / 'never'}" if isinstance(kill, Stop) else kill
        attempt_env = dict(env, SNAKETUNE_FAULT=fault) if fault else env
        log_path = directory / f"attempt-{attempt}.log"
        with open(log_path, "w") as log:
            # a session of its own: the fault kills this attempt's process group, not pytest
            process = subprocess.Popen(command, cwd=REPO, env=attempt_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            if isinstance(kill, Stop):
                _wait_for_text(log_path, f"holding at {kill.point} ", process)
                process.send_signal(kill.signum)
            code = process.wait(timeout=900)
        made.exit_codes.append(code)
        text = log_path.read_text()
        made.attempt_steps.append([int(step) for _, step in PROGRESS.findall(text)])
        expected = 0 if kill is None else 128 + kill.signum if isinstance(kill, Stop) else -signal.SIGKILL
        if code != expected:
            raise AssertionError(f"attempt {attempt} exited {code}, not {expected}:\n{text[-3000:]}")
    for log in sorted((output_dir / "logs").glob("log_*.txt"), key=lambda p: int(re.sub(r"\D", "", p.stem))):
        for line in log.read_text().splitlines():
            match = STEP_LINE.match(line)
            if match:
                made.logged_steps.append((int(match.group(1)), match.group(2), match.group(3)))
    return made


def _wait_for_text(path: Path, text: str, process: subprocess.Popen, timeout: float = 900) -> None:
    """Until ``text`` is in the file (a condition, with a generous ceiling; never a guess of speed)."""
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert process.poll() is None, f"the attempt ended before {text!r}:\n{path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{text!r} not reached"
        time.sleep(0.05)


def assert_same_training(resumed: Training, reference: Training, epochs: int) -> None:
    """Identical adapters after every epoch, identical loss and learning rate at every step."""
    import torch

    for epoch in range(epochs):
        ours, theirs = resumed.adapter(epoch), reference.adapter(epoch)
        assert sorted(ours) == sorted(theirs), f"epoch_{epoch}: other adapter keys"
        different = [key for key in ours if not torch.equal(ours[key], theirs[key])]
        assert not different, f"epoch_{epoch}: {len(different)} adapter tensors differ from the uninterrupted run, e.g. {different[0]}"
    expected = reference.losses()
    assert sorted(expected) == list(range(1, len(expected) + 1))
    assert {step for step, _, _ in resumed.logged_steps} == set(expected), "another set of steps was logged"
    for step, loss, lr in resumed.logged_steps:  # every attempt's lines, repeated steps included
        assert (loss, lr) == expected[step], f"step {step}: loss/lr {loss}/{lr}, uninterrupted {expected[step][0]}/{expected[step][1]}"


def recipe_state(output_dir: Path) -> dict:
    import torch

    return torch.load(output_dir / "recipe_state" / "recipe_state.pt", map_location="cpu", weights_only=True)


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "finetune_manifest.json").read_text())


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())
