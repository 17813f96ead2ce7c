"""Evaluation throughput: one evaluation process per run against one per (task, checkpoint).

    .venv/bin/python benchmarks/bench_evaluations.py

A 2-task x 2-epoch variant of the demo (its 4 runs + the control: 18 evaluations of 100 words),
trained once. Then, side by side, each from no evaluation log:
(a) after: `snakemake --cores 2`: one `evaluate` job per run (5 processes), each checkpoint
    loaded once for both tasks;
(b) before: the same evaluations one process per (task, checkpoint), as the workflow ran them
    until now (`python -m snaketune evaluate --only TASK:CHECKPOINT`, 18 processes, one at a time
    like the evaluate jobs on 2 cores);
(c) anchor: `inspect eval` called directly once per (task, checkpoint) with the same settings.
Figures: wall time of the evaluation phase, processes started, cost per evaluation.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BIN, REPO, SNAKEMAKE, figure, header, machine, timed  # noqa: E402
from bench_jobs import demo_assets, demo_summary, env  # noqa: E402

THREADS = 2


def summary_text(assets: Path) -> str:
    """The demo with a second task (the spelling task beside wordcase)."""
    text = demo_summary(assets)
    row = "| wordcase | snaketune |"
    line = next(line for line in text.splitlines() if line.startswith(row))
    return text.replace(line, line + "\n" + line.replace("| wordcase |", "| spelling |", 1))


def main() -> None:
    import yaml

    print(f"machine: {machine()}\n", flush=True)
    assets = demo_assets()
    with tempfile.TemporaryDirectory(prefix="snaketune-bench-evaluations-") as tmp:
        experiment = Path(tmp) / "exp"
        experiment.mkdir()
        summary = experiment / "experiment_summary.md"
        text = summary_text(assets)
        if "**Epochs to evaluate:**" not in text:
            text = text.replace("## Evaluation Plan", "## Evaluation Plan\n- **Epochs to evaluate:** all epochs", 1)
        summary.write_text(text)
        config = ["--config", f"experiment={summary}"]
        timed([SNAKEMAKE, "scaffold", "--cores", "1", *config], env=env())  # the control's files too
        trained = timed([SNAKEMAKE, "--cores", str(THREADS), "--until", "finetune", *config], env=env())
        print(f"trained in {trained.wall:.0f} s", flush=True)
        setups = sorted(experiment.glob("*/setup_finetune.yaml"))
        pairs = {
            setup: [(t, c) for t, spec in yaml.safe_load(setup.read_text())["evaluation"]["tasks"].items() for c in spec["checkpoints"]]
            for setup in setups
        }
        count = sum(len(p) for p in pairs.values())
        assert count == 18, pairs

        def clean() -> None:
            for setup in setups:
                shutil.rmtree(setup.parent / "eval" / "logs", ignore_errors=True)
                (setup.parent / "eval" / "evaluations.json").unlink(missing_ok=True)
            shutil.rmtree(experiment / "direct-logs", ignore_errors=True)

        clean()
        after = timed([SNAKEMAKE, "--cores", str(THREADS), *config], env=env())
        clean()
        run_env = {**env(), "OMP_NUM_THREADS": str(THREADS)}
        before = [
            timed([str(BIN / "python"), "-m", "snaketune", "evaluate", "--setup", str(setup), "--only", f"{t}:{c}"], env=run_env)
            for setup, run_pairs in pairs.items()
            for t, c in run_pairs
        ]
        clean()
        task = REPO / "src" / "snaketune" / "tasks" / "exact_match.py"
        direct = []
        for setup, run_pairs in pairs.items():
            spec = yaml.safe_load(setup.read_text())
            for _, checkpoint in run_pairs:
                model = spec["model_path"] if checkpoint == "base" else f"{spec['training']['output_dir']}/{checkpoint}"
                direct.append(
                    timed(
                        [
                            str(BIN / "inspect"),
                            "eval",
                            os.path.relpath(task, experiment),
                            "--model",
                            "hf/local",
                            "-M",
                            f"model_path={model}",
                            "-M",
                            "device=cpu",
                            "-M",
                            "do_sample=False",
                            "-T",
                            f"config_path={setup}",
                            "--max-tokens",
                            str(spec["evaluation"]["max_tokens"]),
                            "--max-connections",
                            str(spec["evaluation"]["batch_size"]),
                            "--log-dir",
                            str(experiment / "direct-logs"),
                            "--log-format",
                            "eval",
                            "--display",
                            "plain",
                        ],  # fmt: skip
                        cwd=experiment,
                        env=run_env,
                    )
                )
    before_wall = sum(t.wall for t in before)
    direct_wall = sum(t.wall for t in direct)
    print()
    header()
    figure(
        f"evaluation phase, {count} evaluations (4 runs + control, 2 tasks x 2 epochs)",
        f"{after.wall:.0f} s, {len(pairs)} processes (one per run, incl. snakemake's start and the report)",
        f"before: {before_wall:.0f} s, {len(before)} processes (one per pair)",
        f"{before_wall / after.wall:.2f}x faster",
        "fewer processes, faster",
        "ok" if after.wall < before_wall else "MISSED",
    )
    figure(
        "cost per evaluation",
        f"{after.wall / count:.1f} s (one process per run)",
        f"inspect eval directly: {direct_wall / count:.1f} s; one process per pair: {before_wall / count:.1f} s",
        f"{direct_wall / after.wall:.2f}x faster than inspect eval per pair",
        "-",
        "-",
    )


if __name__ == "__main__":
    main()
