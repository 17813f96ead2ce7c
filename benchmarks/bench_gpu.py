"""GPU check: `python -m snaketune finetune` against `tune run` on one GPU, full-size Llama-3.2-1B.

For a machine with a CUDA GPU (skipped, exit 0, on a CPU-only one). It builds a random-weight
Llama-3.2-1B-Instruct in hub layout (snaketune.hub_models: published config.json, real Llama 3
tokenizer), plans one LoRA run for it through the real planner with `GPUs: 1` (bf16, activation
checkpointing, as rendered for GPUs), then trains the same finetune.yaml twice for the same number
of steps:

  snaketune   `python -m snaketune finetune -- tune run snaketune/resumable_recipe.py` (the workflow's job)
  tune run    `tune run lora_finetune_single_device` on a copy of the config (torchtune alone)

and reports wall time, training tokens/s (torchtune's own per-step figure, median after warm-up) and
peak GPU memory, as a Markdown table and JSON (``--out``). Random weights: the loss is not a result.

On the lent device machine (no network; see BENCHMARKS.md for the wheels it needs):
    python3 benchmarks/bench_gpu.py --steps 300 --out $OUT/bench_gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
MODEL = "Llama-3.2-1B-Instruct"
PUBLISHED = REPO / "tests" / "data" / "models" / MODEL
TEMPLATE = REPO / "tests" / "data" / "chat_templates" / "Llama-3.2-Instruct.jinja"

SUMMARY = """# Experiment: bench_gpu

## All Runs
| Run Name | Model | LoRA Rank | Learning Rate | Type |
|----------|-------|-----------|---------------|------|
| lora | {model} | 8 | 1e-4 | Fine-tuned |

## Resources

### Models
- **{model}**: `{path}`

### Dataset
- **Path:** `{dataset}`

## Configuration
- **Epochs:** 1
- **Batch size:** {batch}
- **GPUs:** {gpus}
- **System prompt:** ""
"""


def sentences(count: int) -> list[dict]:
    """Instruction rows of a realistic length (~60-100 tokens each with the chat format)."""
    import random

    rng = random.Random(0)
    words = "the model learns to answer short questions about plants animals rivers cities colours numbers and tools".split()
    rows = []
    for _ in range(count):
        question = " ".join(rng.choice(words) for _ in range(rng.randint(20, 40)))
        rows.append({"input": question, "output": " ".join(rng.choice(words) for _ in range(rng.randint(10, 30)))})
    return rows


def step_figures(log_dir: Path) -> tuple[list[float], float | None]:
    """tokens/s of every step and the peak allocated GPU memory (GiB) from torchtune's DiskLogger files."""
    tokens, peak = [], None
    for path in sorted(log_dir.glob("log_*.txt")):
        for line in path.read_text().splitlines():
            if match := re.search(r"tokens_per_second_per_gpu:([0-9.]+)", line):
                tokens.append(float(match.group(1)))
            if match := re.search(r"peak_memory_alloc:([0-9.]+)", line):
                peak = max(peak or 0.0, float(match.group(1)))
    return tokens, peak


def timed(command: list[str], cwd: Path, log: Path) -> float:
    started = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, HF_HUB_OFFLINE="1")).returncode
    if code != 0:
        sys.exit(f"failed ({code}): {' '.join(command)}\n{log.read_text()[-4000:]}")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--work", default="/tmp/snaketune-bench-gpu")
    parser.add_argument("--out", help="write the figures as JSON here")
    parser.add_argument("--cpu-smoke", action="store_true", help="check this script on a CPU-only machine (GPUs: 0; use --steps 2)")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("bench_gpu: skipped: no CUDA GPU on this machine")
        return 0
    from snaketune import hub_models, render, scaffold
    from snaketune.parse import read_summary
    from snaketune.plan import plan_experiment

    work = Path(args.work)
    started = time.perf_counter()
    model_dir = hub_models.build_hub_model(PUBLISHED, work / "models" / MODEL, TEMPLATE.read_text(), "llama3")
    build_seconds = time.perf_counter() - started

    experiment = work / "experiment"
    experiment.mkdir(parents=True, exist_ok=True)
    dataset = experiment / "data.json"
    dataset.write_text(json.dumps({"train": sentences(args.steps * args.batch_size), "validation": [], "test": sentences(3)}))
    summary = experiment / "experiment_summary.md"
    summary.write_text(SUMMARY.format(model=MODEL, path=model_dir, dataset=dataset, batch=args.batch_size, gpus=0 if args.cpu_smoke else 1))
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    run = plan_experiment(read_summary(summary), config, {}).runs[0]
    run_dir = experiment / run.run_dir
    scaffold.write_run_files(run.setup, run_dir)
    finetune_yaml = run_dir / "finetune.yaml"

    device = "cpu" if args.cpu_smoke else torch.cuda.get_device_name(0)
    results = {"machine": device, "torch": torch.__version__, "steps": args.steps, "batch_size": args.batch_size}
    results["model_build_seconds"] = round(build_seconds, 1)

    # snaketune's job (the command the finetune rule runs)
    command = [
        sys.executable,
        "-m",
        "snaketune",
        "finetune",
        "--run-dir",
        str(run_dir),
        "--",
        *render.tune_command(run.setup, finetune_yaml),
    ]
    wall = timed(command, experiment, work / "snaketune.log")
    tokens, peak = step_figures(Path(run.setup["training"]["output_dir"]) / "logs")
    results["snaketune"] = {
        "wall_seconds": round(wall, 1),
        "tokens_per_second": statistics.median(tokens[5:] or tokens),
        "peak_memory_gib": peak,
    }

    # torchtune alone, on the same config (its own output dir, the same number of steps)
    bare = yaml.safe_load(finetune_yaml.read_text())
    bare_out = work / "tune-run-output"
    bare.update(output_dir=str(bare_out), max_steps_per_epoch=args.steps)
    bare["checkpointer"]["output_dir"] = str(bare_out)
    bare["metric_logger"]["log_dir"] = str(bare_out / "logs")
    bare_yaml = work / "tune-run.yaml"
    bare_yaml.write_text(yaml.safe_dump(bare, sort_keys=False))
    wall = timed(["tune", "run", "lora_finetune_single_device", "--config", str(bare_yaml)], work, work / "tune-run.log")
    tokens, peak = step_figures(bare_out / "logs")
    results["tune_run"] = {
        "wall_seconds": round(wall, 1),
        "tokens_per_second": statistics.median(tokens[5:] or tokens),
        "peak_memory_gib": peak,
    }

    print("| command | wall (s) | tokens/s (median) | peak GPU memory (GiB) |")
    print("|---|---|---|---|")
    for name in ("snaketune", "tune_run"):
        figures = results[name]
        print(f"| {name} | {figures['wall_seconds']} | {figures['tokens_per_second']:.0f} | {figures['peak_memory_gib']} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
