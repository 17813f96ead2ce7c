"""SLURM allocations and status queries at scale: one evaluation job per run.

    .venv/bin/python benchmarks/bench_slurm_scale.py [--runs 20]   # needs root (scripts/slurm-sandbox)

A 20-run experiment of the tiny demo model (2 epochs of 40 words each, 2 tasks x 2 epochs
evaluated, plus the control) through
`--profile profiles/slurm --profile profiles/slurm-sandbox`. Counted: the Slurm jobs submitted
(from snakemake's output) and the `sacct` calls of the executor plugin (a counting `sacct` first on
PATH). Extrapolated to 1,000 runs, next to the planning-only count of a 1,000-run summary with 2
tasks x 2 epochs (`snakemake -n`): evaluate jobs now, and what one job per (task, checkpoint) was.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import REPO, SNAKEMAKE, figure, header, machine  # noqa: E402
from bench_jobs import demo_assets, env  # noqa: E402
from bench_slurm import SUBMITTED, sandbox  # noqa: E402

SUMMARY = """# Experiment: bench_slurm_scale

## All Runs
| Run Name | Model | LoRA Rank | Learning Rate | Type |
|----------|-------|-----------|---------------|------|
{rows}
| base | tiny-llama | - | - | Control |

## Resources

### Models
- **tiny-llama**: `{model}`

### Dataset
- **Path:** `{dataset}`

### Evaluation Tasks
| Task Name | Script |
|-----------|--------|
| wordcase | snaketune |
| spelling | snaketune |

## Evaluation Plan
- **Epochs to evaluate:** all epochs

## Configuration
- **GPUs:** 0
- **Epochs:** {epochs}
- **Batch size:** 8
- **Max tokens:** 8
"""


def planned(runs: int, epochs: int, tmp: Path) -> dict[str, int]:
    """Planning only: the job counts of `snakemake -n` on a synthetic summary of ``runs`` runs."""
    summary = tmp / f"plan{runs}" / "experiment_summary.md"
    summary.parent.mkdir()
    rows = "\n".join(f"| r{i} | tiny-llama | {4 + i % 5} | {1 + i}e-5 | Fine-tuned |" for i in range(runs))
    summary.write_text(SUMMARY.format(rows=rows, model="/nonexistent/model", dataset="/nonexistent/words.json", epochs=epochs))
    out = subprocess.run([SNAKEMAKE, "-n", "--config", f"experiment={summary}"], cwd=REPO, env=env(), capture_output=True, text=True).stdout
    stats = out.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.MULTILINE)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    print(f"machine: {machine()}\n", flush=True)
    if os.geteuid() != 0 or not shutil.which("sbatch") and not shutil.which("apt-get"):
        print("skipped: the Slurm sandbox needs root (and Slurm or apt-get)")
        return
    from crash import small_dataset

    was_up = sandbox("status").returncode == 0
    if not was_up and sandbox("start").returncode != 0:
        sys.exit("scripts/slurm-sandbox start failed")
    try:
        with tempfile.TemporaryDirectory(prefix="snaketune-bench-slurm-scale-") as tmp:
            tmp = Path(tmp)
            assets = demo_assets()
            dataset = small_dataset(assets, tmp / "data")
            summary = tmp / "exp" / "experiment_summary.md"
            summary.parent.mkdir()
            rows = "\n".join(f"| r{i} | tiny-llama | {4 + i % 5} | {1 + i}e-4 | Fine-tuned |" for i in range(args.runs))
            summary.write_text(SUMMARY.format(rows=rows, model=assets / "models" / "tiny-llama-base", dataset=dataset, epochs=2))
            # a sacct that counts its calls, first on the plugin's PATH
            shim = tmp / "bin"
            shim.mkdir()
            calls = tmp / "sacct-calls"
            real = shutil.which("sacct")
            (shim / "sacct").write_text(f'#!/bin/sh\necho >> {calls}\nexec {real} "$@"\n')
            (shim / "sacct").chmod(0o755)
            run_env = {**env(), "PATH": f"{shim}{os.pathsep}{env()['PATH']}"}
            command = [SNAKEMAKE, "--profile", "profiles/slurm", "--profile", "profiles/slurm-sandbox", "--config", f"experiment={summary}"]
            result = subprocess.run(command, cwd=REPO, env=run_env, capture_output=True, text=True, timeout=7200)
            output = result.stdout + result.stderr
            if result.returncode != 0:
                sys.exit(f"the Slurm run failed ({result.returncode}):\n{output[-4000:]}")
            jobs = [Path(log).parent.parent.name.removeprefix("rule_") for _, _, log in SUBMITTED.findall(output)]
            queries = len(calls.read_text().splitlines()) if calls.exists() else 0
            pairs = sum(len(json.loads(p.read_text())["pairs"]) for p in summary.parent.glob("*/eval/evaluations.json"))
            plan = planned(1000, 2, tmp)
    finally:
        if not was_up:
            sandbox("stop")
    evaluate_jobs = jobs.count("evaluate")
    per_pair_jobs = jobs.count("finetune") + pairs
    scale = 1000 / args.runs
    print(
        f"\n{args.runs} runs + control: {len(jobs)} Slurm jobs ({jobs.count('finetune')} finetune, {evaluate_jobs} evaluate for {pairs} evaluations), {queries} sacct calls\n"
    )
    header()
    figure(
        f"Slurm jobs, {args.runs} runs + control, 2 tasks x 2 epochs",
        f"{len(jobs)} ({evaluate_jobs} evaluation allocations for {pairs} evaluations)",
        f"one job per (task, checkpoint): {per_pair_jobs}",
        f"{per_pair_jobs / len(jobs):.2f}x fewer",
        "one evaluation allocation per run",
        "ok" if evaluate_jobs == args.runs + 1 else "MISSED",
    )
    figure(f"sacct calls of the plugin, {args.runs} runs", f"{queries}", "-", f"~{queries * scale:.0f} for 1,000 runs (linear)", "-", "")
    figure(
        "planning only, 1,000 runs + control, 2 tasks x 2 epochs (`snakemake -n`)",
        f"{plan.get('evaluate', 0)} evaluate jobs, {plan.get('total', 0)} jobs in all",
        f"one per (task, checkpoint): {1000 * 4 + 2} evaluate jobs",
        f"{(1000 * 4 + 2) / max(1, plan.get('evaluate', 1)):.2f}x fewer",
        "-",
        "",
    )


if __name__ == "__main__":
    main()
