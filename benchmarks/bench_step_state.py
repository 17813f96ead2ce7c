"""Step states: how long a mid-epoch save takes, how big it is, what saving often costs.

    .venv/bin/python benchmarks/bench_step_state.py [--reps 3]

One run of the demo (tiny Llama, LoRA rank 4, 2 epochs x 50 optimizer
steps at batch 8), trained through the workflow (`snakemake --until finetune`), side by side:
(a) `training.save_every_steps: 1`: a step state after every optimizer step but the last of an
    epoch (the epoch checkpoint follows there);
(b) anchor: step states off (`save_every_steps: 0`, `save_every_minutes: 0`).
Figures: the save time and size the training reports for each state ("saved a step state ...
in S s, M MiB"), and the wall time of the training job with and without them.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SNAKEMAKE, figure, header, machine, median, timed  # noqa: E402
from bench_jobs import demo_assets, demo_summary, env  # noqa: E402

SAVED = re.compile(r"saved a step state at step \d+ .* in ([\d.]+) s, ([\d.]+) MiB")
RUN = "tiny_rank4_lr1e-4"


def experiment(directory: Path, assets: Path, policy: str) -> list[str]:
    """A one-run copy of the demo in ``directory``; the snakemake arguments that train it."""
    directory.mkdir(parents=True)
    lines = demo_summary(assets).splitlines()
    summary = directory / "experiment_summary.md"
    summary.write_text("\n".join(line for line in lines if not (line.startswith("| tiny_") and not line.startswith(f"| {RUN} |"))) + "\n")
    configfile = directory / "policy.yaml"
    configfile.write_text(f"training:\n{policy}")
    return ["--configfile", "config/config.yaml", str(configfile), "--config", f"experiment={summary}"]


def train(directory: Path, assets: Path, policy: str) -> tuple[float, list[tuple[float, float]]]:
    """Wall time of the training job and the (seconds, MiB) of every step state it saved."""
    args = experiment(directory, assets, policy)
    timed([SNAKEMAKE, "--cores", "1", "--until", "scaffold", *args], env=env())
    wall = timed([SNAKEMAKE, "--cores", "2", "--until", "finetune", *args], env=env()).wall
    logs = list(directory.glob("*/logs/finetune.log"))
    saves = [(float(s), float(m)) for log in logs for s, m in SAVED.findall(log.read_text())]
    return wall, saves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {machine()}\n", flush=True)
    assets = demo_assets()
    walls: dict[str, list[float]] = {"every step": [], "off": []}
    saves: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="snaketune-bench-step-state-") as tmp:
        for rep in range(args.reps):
            wall, made = train(Path(tmp) / f"every-{rep}", assets, "  save_every_steps: 1\n")
            walls["every step"].append(wall)
            saves += made
            wall, made = train(Path(tmp) / f"off-{rep}", assets, "  save_every_steps: 0\n  save_every_minutes: 0\n")
            assert not made, "step states were saved with saving off"
            walls["off"].append(wall)
            print(f"rep {rep}: every step {walls['every step'][-1]:.1f} s, off {wall:.1f} s", flush=True)
    if not saves:
        sys.exit("no step state was saved")
    seconds, sizes = [s for s, _ in saves], [m for _, m in saves]
    per_rep = len(saves) / args.reps
    extra = median(walls["every step"]) - median(walls["off"])
    print(f"\n{len(saves)} step states over {args.reps} reps ({per_rep:.0f} per training)\n")
    header()
    figure("step state save (median / max)", f"{median(seconds):.3f} s / {max(seconds):.3f} s", "", "", "", "")
    figure("step state size", f"{median(sizes):.2f} MiB", "", "", "", "")
    figure(
        "training job, a state every step",
        f"{median(walls['every step']):.1f} s",
        f"{median(walls['off']):.1f} s (off)",
        f"{median(walls['every step']) / median(walls['off']):.2f}x",
        "",
        f"{extra / per_rep * 1000:+.0f} ms per save",
    )


if __name__ == "__main__":
    main()
