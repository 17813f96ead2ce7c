"""``snaketune`` command line: the job entry points and the researcher's commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from snaketune.config_check import ConfigError


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


def cmd_validate(args: argparse.Namespace) -> int:
    from snaketune import validate

    try:
        validate.run(Path(args.run_dir))
    except validate.ValidateError as exc:
        print(f"snaketune validate: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from snaketune import evaluate

    only = [tuple(pair.split(":", 1)) for pair in args.only]
    if any(len(pair) != 2 for pair in only):
        print("snaketune evaluate: --only takes TASK:CHECKPOINT", file=sys.stderr)
        return 2
    try:
        evaluate.run(Path(args.setup), only or None)
    except evaluate.EvaluateError as exc:
        print(f"snaketune evaluate: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    import pandas as pd

    from snaketune.results import format_table

    csv = _experiment_dir(args.experiment) / "results" / "results.csv"
    if not csv.is_file():
        print(f"snaketune results: {csv} does not exist yet (run snakemake, or `snaketune report` for a partial report)", file=sys.stderr)
        return 1
    print(format_table(pd.read_csv(csv)))
    print(f"\nsummary, plots: {csv.parent / 'summary.md'}, {csv.parent / 'plots'}/")
    return 0


def cmd_scaffold(args: argparse.Namespace) -> int:
    import json

    from snaketune.naming import record_run
    from snaketune.scaffold import write_run_files

    payload = json.loads(args.payload)
    setup = payload["setup"]
    experiment_dir = Path(args.experiment_dir).absolute()
    for path in write_run_files(setup, experiment_dir / setup["run_dir"]):
        print(f"wrote {path}")
    # recorded last: a run's name is taken once its files exist
    record_run(experiment_dir, payload["key"], setup["run_name"], setup["run_dir"])
    if setup["type"] == "fine-tuned" and setup["training"]["packing"]:
        print("WARNING: packing on: tokenizer.max_seq_len is an integer, so torchtune 0.6.1 masks the final EOS label")
    if setup["type"] == "fine-tuned":
        _check_prompt_parity(experiment_dir, setup)
    return 0


def _check_prompt_parity(experiment_dir: Path, setup: dict) -> None:
    """The scaffold job's train/eval prompt comparison (snaketune.prompts); the driver reports it."""
    import yaml

    from snaketune.prompts import check_run

    run_dir = experiment_dir / setup["run_dir"]
    try:
        finetune = yaml.safe_load((run_dir / "finetune.yaml").read_text())
        findings = check_run(experiment_dir, setup, run_dir / "setup_finetune.yaml", finetune)
    except Exception as error:  # never fails the job: its files are written and recorded
        print(f"WARNING: run {setup['run_dir']!r}: prompt parity could not be checked: {type(error).__name__}: {error}")
        return
    for parity in findings:
        print(("" if parity.identical else "WARNING: ") + parity.message())


def cmd_parity(args: argparse.Namespace) -> int:
    import yaml

    from snaketune.parse import SummaryError
    from snaketune.prompts import check_run
    from snaketune.workflow import load_plan, workflow_config

    summary = Path(args.experiment)
    summary = summary / "experiment_summary.md" if summary.is_dir() else summary
    try:
        plan = load_plan(summary, workflow_config([Path(p) for p in args.configfile]))
    except (SummaryError, ConfigError, FileNotFoundError) as error:
        print(f"snaketune parity: {error}", file=sys.stderr)
        return 2
    mismatches = checked = 0
    for run in plan.runs:
        run_dir = plan.directory / run.run_dir
        if not run.fine_tuned or not run.setup["evaluation"]["tasks"]:
            continue
        if not (run_dir / "finetune.yaml").is_file():
            print(f"run {run.run_dir!r}: not scaffolded yet (snakemake scaffold --config experiment={summary})")
            continue
        finetune = yaml.safe_load((run_dir / "finetune.yaml").read_text())
        findings = check_run(plan.directory, run.setup, run_dir / "setup_finetune.yaml", finetune, recompute=args.force)
        if not findings:
            print(f"run {run.run_dir!r}: the model's files or a task script are not on this machine")
        for parity in findings:
            checked += 1
            mismatches += not parity.identical
            print(parity.message())
    print(f"{checked} checked, {mismatches} with evaluation prompts that differ from training")
    return 1 if mismatches else 0


def cmd_report(args: argparse.Namespace) -> int:
    from snaketune.report import write_report
    from snaketune.results import Plan, ReportFiles, format_table, plan_on_disk

    experiment_dir = _experiment_dir(args.experiment)
    if args.evaluations is None:
        plan = plan_on_disk(experiment_dir)
    else:
        plan = Plan([Path(p) for p in args.evaluations], [Path(p) for p in args.trainings or []])
    defaults = ReportFiles.under(experiment_dir / "results")
    files = ReportFiles(
        Path(args.table) if args.table else defaults.table,
        Path(args.summary) if args.summary else defaults.summary,
        Path(args.plots) if args.plots else defaults.plots,
    )
    results = write_report(plan, files)
    print(f"{len(results.table)} of {len(plan.evaluations)} planned evaluation(s) -> {files.table}, {files.summary}, {files.plots}/")
    print(format_table(results.table))
    for path in plan.missing_evaluations:
        print(f"missing: {path}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from snaketune import status
    from snaketune.parse import SummaryError

    try:
        found = status.load(Path(args.experiment), [Path(p) for p in args.configfile])
    except (SummaryError, ConfigError, FileNotFoundError) as error:
        print(f"snaketune status: {error}", file=sys.stderr)
        return 2
    if args.write:
        status.write_status_tables(Path(found.summary), found)
        print(f"wrote the Status tables of {found.summary}", file=sys.stderr)
    formats = {"table": status.format_text, "md": status.format_markdown, "json": status.format_json}
    print(formats[args.format](found))
    return 0


def cmd_wandb_sync(args: argparse.Namespace) -> int:
    """Upload every ended, unsynced offline W&B run of the experiment's trainings, in start order."""
    from snaketune import status, wandb_runs
    from snaketune.parse import SummaryError

    try:
        found = status.load(Path(args.experiment), [Path(p) for p in args.configfile], scores=False)
    except (SummaryError, ConfigError, FileNotFoundError) as error:
        print(f"snaketune wandb-sync: {error}", file=sys.stderr)
        return 2
    failed = uploaded = 0
    for run in found.runs:
        if run.state in wandb_runs.ACTIVE and run.wandb_runs:
            print(f"{run.run}: {run.state}: its W&B runs are synced once the training has ended")
        for wandb_run in wandb_runs.runs_to_sync(run.wandb_runs, run.state):
            print(
                f"{run.run}: attempt {wandb_run.attempt}: {'would sync' if args.dry_run else 'syncing'} {wandb_run.directory}", flush=True
            )
            if args.dry_run:
                continue
            wandb_runs.upload(Path(wandb_run.directory))
            if wandb_runs.is_synced(Path(wandb_run.directory), wandb_run.run_id):
                uploaded += 1
            else:  # wandb writes its marker only after a complete upload
                failed += 1
                print(
                    f"{run.run}: attempt {wandb_run.attempt}: W&B run {wandb_run.run_id} was not synced (see wandb's output)",
                    file=sys.stderr,
                )
    if not args.dry_run:
        print(f"{uploaded} W&B run(s) synced" + (f", {failed} failed" if failed else ""))
    return 1 if failed else 0


def cmd_design(args: argparse.Namespace) -> int:
    from snaketune import design
    from snaketune.workflow import workflow_config

    grid_file = Path(args.grid_file) if args.grid_file else None
    try:
        config = workflow_config([Path(p) for p in args.configfile])
        if args.extend:
            new_design_only = {
                "--name": args.name,
                "--dataset": args.dataset,
                "--epochs": args.epochs,
                "--task": args.task,
                "--force": args.force,
            }
            given = [option for option, value in new_design_only.items() if value]
            if given:
                raise design.DesignError(f"--extend keeps the summary's own settings; {', '.join(given)} only apply to a new design")
            outcome = design.extend_summary(
                Path(args.extend),
                grid=args.grid,
                paired=args.paired,
                grid_file=grid_file,
                models=args.model,
                controls=not args.no_controls,
                out=Path(args.out) if args.out else None,
                config=config,
            )
        else:
            outcome = design.new_summary(
                out=Path(args.out) if args.out else None,
                name=args.name,
                models=args.model,
                dataset=args.dataset,
                tasks=args.task,
                epochs=args.epochs,
                grid=args.grid,
                paired=args.paired,
                grid_file=grid_file,
                controls=not args.no_controls,
                force=args.force,
                config=config,
            )
    except (design.DesignError, ConfigError, OSError) as error:
        print(f"snaketune design: {error}", file=sys.stderr)
        return 2
    print("\n".join(outcome.messages))
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

    validate = commands.add_parser(
        "validate", help="validation losses of a finished run's epochs trained without validation (the workflow's validate job)"
    )
    validate.add_argument("--run-dir", required=True)
    validate.set_defaults(func=cmd_validate)

    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate one run: every planned (task, checkpoint) that is missing or outdated (the workflow's job; eval/evaluate.slurm)",
    )
    evaluate.add_argument("--setup", required=True, help="the run's setup_finetune.yaml")
    evaluate.add_argument(
        "--only", action="append", default=[], metavar="TASK:CHECKPOINT", help="only this pair (repeatable; checkpoint epoch_N or base)"
    )
    evaluate.set_defaults(func=cmd_evaluate)

    scaffold = commands.add_parser("scaffold", help="write one run's files (the workflow's per-run scaffold job)")
    scaffold.add_argument("--experiment-dir", required=True)
    scaffold.add_argument("--payload", required=True, help="JSON: the run's key and setup")
    scaffold.set_defaults(func=cmd_scaffold)

    report = commands.add_parser(
        "report",
        help="write results.csv, summary.md and plots (the workflow's report job; by hand: a report of what exists so far)",
    )
    report.add_argument("experiment", help="experiment directory or its experiment_summary.md")
    report.add_argument(
        "--evaluations", nargs="*", help="the planned .eval logs (default: those the run directories' setup_finetune.yaml plan)"
    )
    report.add_argument("--trainings", nargs="*", help="the fine-tuned runs' finetune_manifest.json (with --evaluations)")
    report.add_argument("--table", help="default: <experiment>/results/results.csv")
    report.add_argument("--summary", help="default: <experiment>/results/summary.md")
    report.add_argument("--plots", help="folder of the PNG figures; default: <experiment>/results/plots")
    report.set_defaults(func=cmd_report)

    results = commands.add_parser("results", help="print an experiment's results table")
    results.add_argument("experiment", help="experiment directory or its experiment_summary.md")
    results.set_defaults(func=cmd_results)

    status = commands.add_parser("status", help="where every run stands, why it failed, what to do (reads only)")
    status.add_argument("experiment", nargs="?", default=".", help="experiment directory or its experiment_summary.md")
    status.add_argument("--format", choices=["table", "md", "json"], default="table")
    status.add_argument("--write", action="store_true", help="also rewrite the summary's ## Status tables")
    status.add_argument("--configfile", action="append", default=[], help="the config file(s) the workflow ran with, if not the default")
    status.set_defaults(func=cmd_status)

    wandb_sync = commands.add_parser(
        "wandb-sync",
        help="upload the experiment's offline W&B runs (every ended, unsynced attempt, in start order; needs internet and `wandb login`)",
    )
    wandb_sync.add_argument("experiment", nargs="?", default=".", help="experiment directory or its experiment_summary.md")
    wandb_sync.add_argument("--dry-run", action="store_true", help="only list what would be synced")
    wandb_sync.add_argument(
        "--configfile", action="append", default=[], help="the config file(s) the workflow ran with, if not the default"
    )
    wandb_sync.set_defaults(func=cmd_wandb_sync)

    design = commands.add_parser(
        "design",
        help="write an experiment_summary.md from a grid of factors, or add a grid's new runs to one (--extend)",
        description="Write a new experiment_summary.md from factors and levels (crossed; --paired factors are zipped "
        "and crossed with the rest), or with --extend add only the combinations an existing summary lacks, keeping "
        "every existing byte. Relative paths are read against the summary's folder.",
    )
    design.add_argument("--out", help="the summary to write (with --extend: default EXISTING.md itself, replaced atomically)")
    design.add_argument("--extend", metavar="EXISTING.md", help="add the grid's new runs to this summary")
    design.add_argument("--name", help="experiment name")
    design.add_argument("--model", action="append", default=[], metavar="NAME=PATH", help="a model (repeat for several: crossed)")
    design.add_argument("--dataset", metavar="PATH", help="JSON file with train/validation/test, or a folder of parquet splits")
    design.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="NAME=SCRIPT",
        help="an inspect-ai task (SCRIPT 'snaketune': the built-in exact match)",
    )
    design.add_argument("--epochs", type=int, help="training epochs (the last one is evaluated)")
    design.add_argument("--grid", action="append", default=[], metavar="FACTOR=V1,V2", help="a crossed factor, e.g. 'LoRA Rank=4,8,16'")
    design.add_argument(
        "--paired", action="append", default=[], metavar="FACTOR=V1,V2", help="factors zipped together (same number of levels)"
    )
    design.add_argument("--grid-file", metavar="YAML", help="{grid: {LoRA Rank: [4, 8]}, paired: {...}}")
    design.add_argument("--no-controls", action="store_true", help="no base-model control row per model")
    design.add_argument("--force", action="store_true", help="replace an existing --out file (new design)")
    design.add_argument("--configfile", action="append", default=[], help="config file(s) to plan with, if not the default")
    design.set_defaults(func=cmd_design)

    parity = commands.add_parser(
        "parity",
        help="compare each fine-tuned run's evaluation prompt with its training prompt, token by token",
        description="Render each task's first test sample the way torchtune trains and the way inspect's hf provider "
        "evaluates, and show where they differ. Findings are cached in <experiment>/.snaketune/parity/. Exit 1 on a mismatch.",
    )
    parity.add_argument("experiment", help="experiment directory or its experiment_summary.md")
    parity.add_argument("--force", action="store_true", help="recompute cached findings")
    parity.add_argument("--configfile", action="append", default=[], help="the config file(s) the workflow ran with, if not the default")
    parity.set_defaults(func=cmd_parity)

    demo = commands.add_parser("demo", help="build the demo's tiny model and data")
    demo.add_argument("--dest", default="examples/demo")
    demo.add_argument("--force", action="store_true")
    demo.set_defaults(func=cmd_demo)

    args = parser.parse_args(argv)
    from snaketune import faults

    run_dir = _run_of_job(args)
    faults.reached(f"{args.name}:start", run_dir)
    code = args.func(args)
    faults.reached(f"{args.name}:end", run_dir)
    return code


def _run_of_job(args: argparse.Namespace) -> str:
    """The run directory a job command works on ("" for the others): fault points' scope."""
    if args.name in ("finetune", "validate"):
        return Path(args.run_dir).name
    if args.name == "evaluate":
        return Path(args.setup).absolute().parent.name
    if args.name == "scaffold":
        import json

        return json.loads(args.payload)["setup"]["run_dir"]
    return ""
