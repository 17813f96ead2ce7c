"""Crash consistency: an experiment interrupted anywhere, then ``--unlock`` + rerun, must end in
exactly the state that the same change reaches without interruption.

A small real experiment (1 fine-tuned run + its control, 2 epochs × 5 steps, 10 test words) is
finished once per session and kept as a pristine copy. A scenario restores it to the *same*
path (every path in the run files is absolute), applies a change of the summary (epochs raised,
an evaluation setting changed, a row added) and runs the workflow:
- uninterrupted, once per change: the reference :class:`Outcome`;
- with ``SNAKETUNE_FAULT=<point>`` (:mod:`snaketune.faults`): the whole snakemake process
  group is SIGKILLed there; then ``--unlock`` and the same command again.
:func:`assert_converged` compares the two: the same run directories, every run at its final
epoch, identical adapter weights of every epoch (``torch.equal``), the same scores, every
evaluation recorded as made with the plan's settings, nothing left to do, and no checkpoint or
finished evaluation log that existed before lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from e2e_helpers import REPO, SNAKEMAKE, row, snakemake, write_summary

ROWS = [row("only", 8, "1e-3"), row("base", "-", "-", "Control")]
ADDED_ROW = row("wider", 16, "1e-3")


def raise_epochs(text: str) -> str:
    return text.replace("**Epochs:** 2", "**Epochs:** 3")


def change_max_tokens(text: str) -> str:
    return text.replace("**Max tokens:** 16", "**Max tokens:** 12")


def add_row(text: str) -> str:
    return text.replace(ROWS[0], ROWS[0] + "\n" + ADDED_ROW)


CHANGES: dict[str, Callable[[str], str]] = {"epochs raised": raise_epochs, "max tokens changed": change_max_tokens, "row added": add_row}


def small_dataset(assets: Path, folder: Path) -> Path:
    """The demo's words, cut to 40 training words (5 steps of batch 8) and 10 test words."""
    data = json.loads((assets / "data" / "wordcase.json").read_text())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "words.json"
    path.write_text(json.dumps({"train": data["train"][:40], "validation": data["validation"][:5], "test": data["test"][:10]}))
    return path


@dataclass
class Outcome:
    run_dirs: list[str]
    epochs: dict[str, list[str]]  # run -> the epochs its manifest lists
    adapters: dict[tuple[str, str], dict]  # (run, epoch) -> adapter tensors
    scores: dict[tuple[str, str, str], float]  # (run, task, checkpoint) -> accuracy


def read_outcome(experiment: Path) -> Outcome:
    from safetensors.torch import load_file

    run_dirs = sorted(p.parent.name for p in experiment.glob("*/setup_finetune.yaml"))
    epochs, adapters = {}, {}
    for manifest_path in sorted(experiment.glob("*/finetune_manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        run = manifest_path.parent.name
        epochs[run] = sorted(manifest["epochs"])
        for epoch, folder in manifest["epochs"].items():
            adapters[run, epoch] = load_file(str(Path(folder) / "adapter_model.safetensors"))
    table = pd.read_csv(experiment / "results" / "results.csv")
    scores = {(r.run, r.task, r.checkpoint): float(r.accuracy) for r in table.itertuples()}
    return Outcome(run_dirs, epochs, adapters, scores)


def finished_files(experiment: Path) -> dict[str, str]:
    """Content hash -> path of every saved epoch's weights and every evaluation log."""
    files = [*experiment.glob("ck-outputs/*/epoch_*/*.safetensors"), *experiment.glob("*/eval/logs/*.eval")]
    return {hashlib.sha256(p.read_bytes()).hexdigest(): str(p) for p in files}


def all_files(experiment: Path) -> set[str]:
    return {
        hashlib.sha256(p.read_bytes()).hexdigest() for p in experiment.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".eval")
    }


class CrashExperiment:
    """The pristine finished experiment and the scenarios run from it, at one fixed path."""

    def __init__(self, root: Path, assets: Path):
        self.path = root / "exp"
        self.pristine = root / "pristine"
        self._references: dict[str, Outcome] = {}
        dataset = small_dataset(assets, root / "data")
        summary = write_summary(self.path, assets, ROWS, epochs=2, name="crash")
        summary.write_text(summary.read_text().replace(str(assets / "data" / "wordcase.json"), str(dataset)))
        snakemake(summary, "--cores", "2")
        shutil.copytree(self.path, self.pristine, symlinks=True)  # copy2: mtimes kept

    @property
    def summary(self) -> Path:
        return self.path / "experiment_summary.md"

    def restore(self, change: str | None) -> None:
        """Back to the pristine finished state, with ``change`` (a key of CHANGES) applied."""
        shutil.rmtree(self.path)
        shutil.copytree(self.pristine, self.path, symlinks=True)
        if change:
            self.summary.write_text(CHANGES[change](self.summary.read_text()))

    def reference(self, change: str) -> Outcome:
        """What the change reaches without interruption (made once per change)."""
        if change not in self._references:
            self.restore(change)
            snakemake(self.summary, "--cores", "2")
            self._references[change] = read_outcome(self.path)
        return self._references[change]

    def crash(self, change: str, point: str) -> subprocess.CompletedProcess:
        """Restore, apply ``change``, run until ``point`` kills the whole snakemake process group."""
        self.restore(change)
        command = [str(SNAKEMAKE), "--cores", "2", "--config", f"experiment={self.summary}"]
        env = dict(os.environ, HF_HUB_OFFLINE="1", SNAKETUNE_FAULT=point)
        return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200, start_new_session=True)


def assert_converged(experiment: CrashExperiment, change: str, point: str) -> None:
    """Crash at ``point`` during ``change``, recover as the README says, compare with the reference."""
    reference = experiment.reference(change)
    experiment.restore(change)
    before = finished_files(experiment.path)
    crashed = experiment.crash(change, point)
    where = f"[{change}, killed at {point}]"
    assert crashed.returncode == -signal.SIGKILL, (
        f"{where} the fault point was not reached (exit {crashed.returncode}):\n{crashed.stderr[-3000:]}"
    )
    snakemake(experiment.summary, "--unlock")
    rerun = snakemake(experiment.summary, "--cores", "2", check=False)
    assert rerun.returncode == 0, f"{where} the rerun failed:\n{rerun.stdout[-2000:]}\n{rerun.stderr[-6000:]}"
    after = read_outcome(experiment.path)
    assert after.run_dirs == reference.run_dirs, where
    assert after.epochs == reference.epochs, f"{where} not every run is at its final epoch"
    import torch

    for key, tensors in reference.adapters.items():
        ours = after.adapters[key]
        different = [name for name in tensors if not torch.equal(tensors[name], ours[name])]
        assert not different, f"{where} {key[0]} {key[1]}: {len(different)} adapter tensors differ from the uninterrupted run"
    assert after.scores == reference.scores, f"{where} scores differ from the uninterrupted run"
    done = snakemake(experiment.summary, "-n")
    assert "Nothing to be done" in done.stdout + done.stderr, f"{where} a second rerun still plans work:\n{done.stdout[-3000:]}"
    kept = all_files(experiment.path)
    lost = [path for digest, path in before.items() if digest not in kept]
    assert not lost, f"{where} finished checkpoints or evaluation logs were lost: {lost}"
