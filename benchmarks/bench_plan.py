"""Planning cost: parsing a summary, and `snakemake -n -q` against a bare Snakefile of the same shape.

    .venv/bin/python benchmarks/bench_plan.py                 # 10, 100, 1000, 3000 runs, 3 tries each
    .venv/bin/python benchmarks/bench_plan.py --sizes 1000 --reps 5

The experiment is synthetic (benchmarks/synthetic.py): N fine-tuned runs + 1 control, one task,
both epochs of 2 evaluated, model/dataset/task paths that don't exist here. The anchors are
benchmarks/bare/Snakefile with the same runs: `bare-issue` is the shape issue 7 names and judges by
(scaffold -> config -> finetune -> evaluate x 2 -> report, 5 jobs per run); `bare-same` has exactly
snaketune's jobs, files and edges (4 jobs per run; its 3-file scaffold job and the evaluations'
second input cost the DAG more than they save in jobs), so the ratio to it is what snaketune's own
logic costs. Commands run alternately (snaketune, bare-issue, bare-same, snaketune, ...) and each
figure is the median of the tries: the machine may be shared, and alternating spreads any load over
all three. CPU seconds (user + system) are printed too: they move less than wall time on a busy
machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, SNAKEMAKE, figure, header, machine, median, timed, verdict  # noqa: E402
from synthetic import write  # noqa: E402

BARE = REPO / "benchmarks" / "bare" / "Snakefile"
PLAN_GOAL = 1.3  # snaketune / bare
PARSE_GOAL = 0.2  # seconds for 1,000 runs
LINEAR_GOAL = 1.25  # per-run cost at 1,000 -> 3,000 runs over that at 10 -> 1,000 runs


def jobs(kind: str, runs: int) -> int:
    per_run = 5 if kind == "bare-issue" else 4
    return per_run * runs + 4  # + the control's scaffold and evaluation, report, all


def parse_seconds(summary: Path, reps: int) -> tuple[float, float]:
    """Median seconds to parse the summary, and to parse + plan every run (in this process)."""
    import yaml

    from snaketune.parse import read_summary
    from snaketune.workflow import load_plan

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    parse, plan = [], []
    for _ in range(reps):
        start = time.perf_counter()
        read_summary(summary)
        parse.append(time.perf_counter() - start)
        start = time.perf_counter()
        load_plan(summary, config)
        plan.append(time.perf_counter() - start)
    return median(parse), median(plan)


def plan_commands(runs: int, scratch: Path) -> dict[str, tuple[list[str], Path]]:
    summary = write(runs, scratch / f"exp{runs}")
    bare = scratch / f"bare{runs}"
    bare.mkdir(exist_ok=True)
    bare_command = [SNAKEMAKE, "-s", str(BARE), "-d", str(bare), "-n", "-q", "--config", f"runs={runs}"]
    return {
        "snaketune": ([SNAKEMAKE, "-n", "-q", "--config", f"experiment={summary}"], REPO),
        "bare-issue": ([*bare_command, "shape=issue"], REPO),
        "bare-same": ([*bare_command, "shape=snaketune"], REPO),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 3000])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    env = {key: value for key, value in os.environ.items() if key != "SNAKETUNE_EXPERIMENT"}
    print(f"machine: {machine()}\n")

    with tempfile.TemporaryDirectory(prefix="snaketune-bench-plan-") as tmp:
        scratch = Path(tmp)
        summary = write(1000, scratch / "parse")
        parse, plan = parse_seconds(summary, max(args.reps, 5))

        results: dict[int, dict[str, list]] = {}
        for runs in args.sizes:
            commands = plan_commands(runs, scratch)
            results[runs] = {name: [] for name in commands}
            for _ in range(args.reps):
                for name, (command, cwd) in commands.items():
                    results[runs][name].append(timed(command, cwd=cwd, env=env))
            walls = {name: median(t.wall for t in tries) for name, tries in results[runs].items()}
            cpus = {name: median(t.cpu for t in tries) for name, tries in results[runs].items()}
            print(
                f"{runs:>5} runs: "
                + ", ".join(f"{name} {walls[name]:.2f} s wall / {cpus[name]:.2f} s cpu ({jobs(name, runs)} jobs)" for name in walls),
                flush=True,
            )

    print()
    header()
    figure("parse a 1,000-run summary", f"{parse:.3f} s", "-", "-", f"< {PARSE_GOAL} s", verdict(parse < PARSE_GOAL))
    figure("parse + plan 1,000 runs (load_plan)", f"{plan:.3f} s", "-", "-", "-", "")
    for runs in args.sizes:
        tries = results[runs]
        st = median(t.wall for t in tries["snaketune"])
        st_cpu = median(t.cpu for t in tries["snaketune"])
        for anchor in ("bare-issue", "bare-same"):
            wall = median(t.wall for t in tries[anchor])
            cpu = median(t.cpu for t in tries[anchor])
            judged = runs == 1000 and anchor == "bare-issue"
            goal = f"<= {PLAN_GOAL}x" if judged else "-"
            ok = verdict(st / wall <= PLAN_GOAL) if judged else ""
            figure(
                f"`snakemake -n -q`, {runs} runs vs {anchor}",
                f"{st:.2f} s ({st_cpu:.2f} s cpu)",
                f"{wall:.2f} s ({cpu:.2f} s cpu)",
                f"{st / wall:.2f}x ({st_cpu / cpu:.2f}x cpu)",
                goal,
                ok,
            )
    sizes = sorted(args.sizes)
    if len(sizes) >= 3:
        low, mid, high = sizes[0], sizes[-2], sizes[-1]
        st = {n: median(t.wall for t in results[n]["snaketune"]) for n in sizes}
        first = (st[mid] - st[low]) / (mid - low) * 1000
        second = (st[high] - st[mid]) / (high - mid) * 1000
        figure(
            f"cost per added run, {mid} -> {high} vs {low} -> {mid} runs",
            f"{second:.2f} ms",
            f"{first:.2f} ms",
            f"{second / first:.2f}x",
            f"<= {LINEAR_GOAL}x (linear)",
            verdict(second / first <= LINEAR_GOAL),
        )
        for n in sizes:
            figure(f"ms per job, {n} runs (snaketune)", f"{st[n] / jobs('snaketune', n) * 1000:.2f} ms", "-", "-", "-", "")


if __name__ == "__main__":
    main()
