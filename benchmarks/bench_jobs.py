"""Per-job overhead: the `finetune` + `evaluate` rules against `tune run` + `inspect eval` called directly.

    .venv/bin/python benchmarks/bench_jobs.py [--reps 3] [--epochs 1]

One fine-tuned run of the tiny demo model (built once into $SNAKETUNE_BENCH_CACHE, default
~/.cache/snaketune-bench, or taken from examples/demo when `make demo` built it there), CPU only.
(a) `snakemake --cores 2 <run>/eval/evaluations.json`: Snakemake's start and DAG, the
    `finetune` job (`python -m snaketune finetune`: checks, lock, fingerprint, steps per epoch,
    then `tune run`) and the `evaluate` job (`python -m snaketune evaluate`: inspect-ai's Python API).
(b) the same `tune run` command line the finetune job ran (read from its log, same config and
    overrides, same OMP_NUM_THREADS) and then `inspect eval` of the same task, checkpoint and
    generation settings.
The run's files are rendered once beforehand (`snakemake scaffold`, not timed: (b) needs them too).
(a) and (b) alternate; each starts from no checkpoint and no result. Overhead = (a - b) / a.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BIN, REPO, SNAKEMAKE, figure, header, machine, median, timed, verdict  # noqa: E402

GOAL = 0.05
THREADS = 2
SUMMARY = """# Experiment: bench_jobs

## All Runs
| Run Name | Model | LoRA Rank | Learning Rate | Type | Est. Time |
|----------|-------|-----------|---------------|------|-----------|
| bench | tiny-llama | 8 | 1e-3 | Fine-tuned | ~30s |

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
- **Epochs to evaluate:** last epoch

## Configuration
- **Recipe:** lora_finetune_single_device
- **GPUs:** 0
- **Epochs:** {epochs}
- **Batch size:** 8
- **System prompt:** ""
- **Max tokens:** 16
"""


def demo_assets() -> Path:
    """A folder with the demo's models/ and data/: examples/demo when built there, else the cache."""
    from snaketune.demo import build_demo_assets

    demo = REPO / "examples" / "demo"
    if (demo / "models" / "tiny-llama-base" / "model.safetensors").is_file() and (demo / "data" / "wordcase.json").is_file():
        return demo
    cache = Path(os.environ.get("SNAKETUNE_BENCH_CACHE", Path.home() / ".cache" / "snaketune-bench")) / "demo"
    print(f"building the demo model into {cache} (about a minute, once)", flush=True)
    build_demo_assets(cache)
    return cache


def demo_summary(assets: Path) -> str:
    """The demo's experiment_summary.md with its model and dataset taken from ``assets``."""
    text = (REPO / "examples" / "demo" / "experiment_summary.md").read_text()
    text = text.replace("models/tiny-llama-base", str(assets / "models" / "tiny-llama-base"))
    return text.replace("data/wordcase.json", str(assets / "data" / "wordcase.json"))


def env() -> dict:
    return {
        **{k: v for k, v in os.environ.items() if k != "SNAKETUNE_EXPERIMENT"},
        "HF_HUB_OFFLINE": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    print(f"machine: {machine()}\n", flush=True)
    assets = demo_assets()
    with tempfile.TemporaryDirectory(prefix="snaketune-bench-jobs-") as tmp:
        experiment = Path(tmp) / "exp"
        experiment.mkdir()
        summary = experiment / "experiment_summary.md"
        summary.write_text(
            SUMMARY.format(model=assets / "models" / "tiny-llama-base", dataset=assets / "data" / "wordcase.json", epochs=args.epochs)
        )
        config = ["--config", f"experiment={summary}"]
        timed([SNAKEMAKE, "scaffold", "--cores", "1", *config], env=env())
        (record,) = (experiment / ".snaketune" / "runs").glob("*.json")
        run_dir = experiment / record.stem
        setup_path = run_dir / "setup_finetune.yaml"
        import yaml

        setup = yaml.safe_load(setup_path.read_text())
        checkpoints = Path(setup["training"]["output_dir"])
        epoch = f"epoch_{args.epochs - 1}"
        eval_log = run_dir / "eval" / "logs" / f"wordcase_{epoch}.eval"
        target = str((run_dir / "eval" / "evaluations.json").relative_to(experiment))
        evaluation = setup["evaluation"]
        task = REPO / "src" / "snaketune" / "tasks" / "exact_match.py"

        def clean() -> None:
            shutil.rmtree(checkpoints, ignore_errors=True)
            shutil.rmtree(experiment / "direct-logs", ignore_errors=True)
            for path in (run_dir / "finetune_manifest.json", eval_log, eval_log.with_name(eval_log.name + ".json")):
                path.unlink(missing_ok=True)
            (run_dir / "eval" / "evaluations.json").unlink(missing_ok=True)

        def direct_commands() -> tuple[list[str], list[str]]:
            """The exact `tune run` line the finetune job ran, and the equivalent `inspect eval`."""
            lines = (run_dir / "logs" / "finetune.log").read_text().splitlines()
            tune = [line.removeprefix("snaketune: ") for line in lines if line.startswith("snaketune: tune run")][-1]
            inspect = [
                str(BIN / "inspect"), "eval", os.path.relpath(task, experiment), "--model", "hf/local",
                "-M", f"model_path={checkpoints / epoch}", "-M", "device=cpu", "-M", "do_sample=False",
                "-T", f"config_path={setup_path}", "--max-tokens", str(evaluation["max_tokens"]),
                "--log-dir", str(experiment / "direct-logs"), "--log-format", "eval", "--display", "plain",
            ]  # fmt: skip
            return shlex.split(tune), inspect

        through, direct = [], []
        commands = None
        for rep in range(args.reps):
            clean()
            through.append(timed([SNAKEMAKE, "--cores", str(THREADS), target, *config], env=env()))
            commands = commands or direct_commands()
            clean()
            run_env = {**env(), "OMP_NUM_THREADS": str(THREADS)}
            tune = timed(commands[0], cwd=experiment, env=run_env)
            inspect = timed(commands[1], cwd=experiment, env=run_env)
            direct.append((tune, inspect))
            print(
                f"try {rep + 1}: snakemake {through[-1].wall:.1f} s; direct {tune.wall + inspect.wall:.1f} s "
                f"(tune run {tune.wall:.1f} s + inspect eval {inspect.wall:.1f} s)",
                flush=True,
            )
        print(f"\ndirect commands:\n  {shlex.join(commands[0])}\n  {shlex.join(commands[1])}\n")

    a = median(t.wall for t in through)
    b = median(t.wall + i.wall for t, i in direct)
    header()
    figure(
        f"finetune + evaluate jobs, 1 run x {args.epochs} epoch(s) (snakemake, incl. its start)",
        f"{a:.1f} s",
        f"{b:.1f} s (tune run {median(t.wall for t, _ in direct):.1f} + inspect eval {median(i.wall for _, i in direct):.1f})",
        f"{a / b:.3f}x, overhead {(a - b) / a:.1%} of wall time",
        f"<= {GOAL:.0%}",
        verdict((a - b) / a <= GOAL),
    )


if __name__ == "__main__":
    main()
