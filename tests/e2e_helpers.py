"""Running the real workflow from tests: a small experiment on the tiny demo model."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"

SUMMARY = """# Experiment: e2e_{name}

## All Runs
| Run Name | Model | LoRA Rank | Learning Rate | Type | Est. Time |
|----------|-------|-----------|---------------|------|-----------|
{rows}

## Resources

### Models
- **tiny-llama**: `{model}`

### Dataset
- **Path:** `{dataset}`

### Evaluation Tasks
| Task Name | Script | Dataset | Description |
|-----------|--------|---------|-------------|
| wordcase | snaketune | wordcase.json (test) | exact match |

## Evaluation Plan
{plan}

## Configuration
- **Recipe:** lora_finetune_single_device
- **GPUs:** 0
- **Epochs:** {epochs}
- **Batch size:** 8
- **System prompt:** ""
- **Max tokens:** 16
"""


def row(name: str, rank: int | str, lr: str, kind: str = "Fine-tuned") -> str:
    return f"| {name} | tiny-llama | {rank} | {lr} | {kind} | ~20s |"


def write_summary(
    directory: Path, assets: Path, rows: list[str], epochs: int = 1, plan: str = "Evaluate the last epoch.", name: str = "test"
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "experiment_summary.md"
    path.write_text(
        SUMMARY.format(
            name=name,
            rows="\n".join(rows),
            model=assets / "models" / "tiny-llama-base",
            dataset=assets / "data" / "wordcase.json",
            plan=plan,
            epochs=epochs,
        )
    )
    return path


def snakemake(summary: Path, *args: str, check: bool = True, timeout: float = 1200, **env: str) -> subprocess.CompletedProcess:
    """Run the workflow the way a user does, from the repository root (``env``: extra variables)."""
    command = [str(SNAKEMAKE), *args, "--config", f"experiment={summary}"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", **env)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return result


def planned_jobs(output: str) -> dict[str, int]:
    """The dry run's "Job stats" table as {rule: count}."""
    counts = {}
    table = output.split("Job stats:", 1)[1] if "Job stats:" in output else ""
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    counts.pop("total", None)
    return counts


def digest(directory: Path) -> dict[str, tuple[str, int]]:
    """Content hash and mtime of every file in a directory: equal means not rewritten."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir()) if p.is_file()}


def wait_for(condition, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the workflow ended before the condition was met"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
