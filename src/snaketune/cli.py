"""``snaketune`` command line: the job entry points and the researcher's commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _experiment_dir(value: str) -> Path:
    path = Path(value)
    return path.parent if path.is_file() else path


def cmd_finetune(args: argparse.Namespace) -> int:
    from snaketune import finetune

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        return finetune.run(Path(args.run_dir), command)
    except finetune.FinetuneError as exc:
        print(f"snaketune finetune: {exc}", file=sys.stderr)
        return 1


def cmd_evaluate(args: argparse.Namespace) -> int:
    from snaketune import evaluate

    try:
        evaluate.run(Path(args.setup), args.task, args.checkpoint, Path(args.out))
    except evaluate.EvaluateError as exc:
        print(f"snaketune evaluate: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    import pandas as pd

    from snaketune.results import format_table

    csv = _experiment_dir(args.experiment) / "results" / "results.csv"
    if not csv.is_file():
        print(f"snaketune results: {csv} does not exist yet (run snakemake first)", file=sys.stderr)
        return 1
    print(format_table(pd.read_csv(csv)))
    return 0


def cmd_scaffold(args: argparse.Namespace) -> int:
    import json

    from snaketune.naming import read_registry, record_run
    from snaketune.scaffold import keep_outdated_results, write_run_files

    payload = json.loads(args.payload)
    setup = payload["setup"]
    experiment_dir = Path(args.experiment_dir).absolute()
    previous = read_registry(experiment_dir).get(setup["run_dir"], {}).get("digests")
    if previous:
        for path in keep_outdated_results(experiment_dir / setup["run_dir"], previous, payload["digests"]):
            print(f"kept {path} (made with the previous settings; the evaluation will be redone)")
    for path in write_run_files(setup, experiment_dir / setup["run_dir"]):
        print(f"wrote {path}")
    # recorded last: the digests say which settings the files on disk were rendered from
    record_run(experiment_dir, payload["key"], setup["run_name"], setup["run_dir"], payload["digests"])
    if setup["type"] == "fine-tuned" and setup["training"]["packing"]:
        print("WARNING: packing on: tokenizer.max_seq_len is an integer, so torchtune 0.6.1 masks the final EOS label")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from snaketune.results import format_table, write_results

    table = write_results([Path(p) for p in args.logs], Path(args.out))
    print(f"{len(table)} evaluation(s) -> {args.out}")
    print(format_table(table))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from snaketune.demo import build_demo_assets

    build_demo_assets(Path(args.dest), force=args.force)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="snaketune", description=__doc__)
    commands = parser.add_subparsers(dest="name", required=True)

    finetune = commands.add_parser("finetune", help="run one fine-tune job (used by the workflow and finetune.slurm)")
    finetune.add_argument("--run-dir", required=True)
    finetune.add_argument("command", nargs=argparse.REMAINDER, help="-- tune run ... --config finetune.yaml")
    finetune.set_defaults(func=cmd_finetune)

    evaluate = commands.add_parser("evaluate", help="run one evaluation job (used by the workflow and eval/*.slurm)")
    evaluate.add_argument("--setup", required=True, help="the run's setup_finetune.yaml")
    evaluate.add_argument("--task", required=True)
    evaluate.add_argument("--checkpoint", required=True, help="epoch_N, or base for a control")
    evaluate.add_argument("--out", required=True, help="the .eval log to write")
    evaluate.set_defaults(func=cmd_evaluate)

    scaffold = commands.add_parser("scaffold", help="write one run's files (the workflow's per-run scaffold job)")
    scaffold.add_argument("--experiment-dir", required=True)
    scaffold.add_argument("--payload", required=True, help="JSON: the run's key and setup")
    scaffold.set_defaults(func=cmd_scaffold)

    report = commands.add_parser("report", help="aggregate evaluation logs into results.csv (the workflow's report job)")
    report.add_argument("--out", required=True)
    report.add_argument("logs", nargs="*")
    report.set_defaults(func=cmd_report)

    results = commands.add_parser("results", help="print an experiment's results table")
    results.add_argument("experiment", help="experiment directory or its experiment_summary.md")
    results.set_defaults(func=cmd_results)

    demo = commands.add_parser("demo", help="build the demo's tiny model and data")
    demo.add_argument("--dest", default="examples/demo")
    demo.add_argument("--force", action="store_true")
    demo.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    return args.func(args)
