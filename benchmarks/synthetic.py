"""A synthetic experiment of N fine-tuned runs (+1 control, 1 task, 2 epochs all evaluated).

Its model, dataset and task-script paths don't exist on this machine: planning on a laptop
for the cluster, the case `snakemake -n` must be fast for.

    python benchmarks/synthetic.py 1000 /tmp/exp1000    # writes /tmp/exp1000/experiment_summary.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

RANKS = (4, 8, 16, 32, 64)

HEADER = """# Experiment: synthetic_{runs}

## Overview
- **Type:** experiment
- **Runs:** {runs} fine-tuned + 1 control = {total} total

## All Runs
| Run Name | Model | LoRA Rank | Learning Rate | Type | Est. Time |
|----------|-------|-----------|---------------|------|-----------|
"""

FOOTER = """| Llama-3.2-1B_base | Llama-3.2-1B-Instruct | - | - | Control | N/A |

## Resources

### Models
- **Llama-3.2-1B-Instruct**: `/nonexistent/models/Llama-3.2-1B-Instruct`

### Dataset
- **Path:** `/nonexistent/data/words.json`

### Evaluation Tasks
| Task Name | Script | Dataset | Description |
|-----------|--------|---------|-------------|
| wordcase | `/nonexistent/tasks/wordcase.py` | words.json (test) | exact match |

## Evaluation Plan
- **Epochs to evaluate:** all epochs

## Configuration

### Training
- **Recipe:** lora_finetune_single_device
- **Epochs:** 2
- **Batch size:** 8
- **System prompt:** ""

### Evaluation
- **Temperature:** 0.0
- **Max tokens:** 16

### Output
- **Checkpoint directory:** `/nonexistent/scratch/ck-outputs`
"""


def learning_rates(count: int) -> list[str]:
    """``count`` distinct learning rates (1e-5 .. about 1e-3, three significant digits)."""
    return [f"{(1 + i) * 1e-6:.3g}".replace("e-0", "e-") for i in range(count)]


def summary_text(runs: int) -> str:
    per_rank = -(-runs // len(RANKS))
    rows = []
    for i in range(runs):
        rank, lr = RANKS[i % len(RANKS)], learning_rates(per_rank)[i // len(RANKS)]
        rows.append(f"| r{rank}_lr{lr} | Llama-3.2-1B-Instruct | {rank} | {lr} | Fine-tuned | ~10min |")
    return HEADER.format(runs=runs, total=runs + 1) + "\n".join(rows) + "\n" + FOOTER


def write(runs: int, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "experiment_summary.md"
    path.write_text(summary_text(runs))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=int)
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    print(write(args.runs, args.directory))


if __name__ == "__main__":
    main()
