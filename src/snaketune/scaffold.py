"""Write every file of one run directory from its setup (the per-run scaffold job)."""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

from snaketune import render

SETUP_HEADER = "# Rendered by snaketune from experiment_summary.md: edit the summary, not this file.\n"


# One evaluation job per run: every planned (task, checkpoint), each checkpoint loaded once.
EVALUATE_SCRIPT = Path("eval") / "evaluate.slurm"


# <task>_<checkpoint>.eval, checkpoint being epoch_N, best (lowest validation loss) or base (a control's base model)
EVAL_LOG = re.compile(r"^(?P<task>.+)_(?P<checkpoint>base|best|epoch_\d+)\.eval$")


def eval_log_name(task: str, checkpoint: str) -> str:
    return f"{task}_{checkpoint}.eval"


def write_run_files(setup: dict, run_dir: Path) -> list[Path]:
    """setup_finetune.yaml, and for a fine-tuned run finetune.yaml + finetune.slurm, plus the
    run's evaluation script (all its tasks and checkpoints). Returns the files written."""
    run_dir = run_dir.absolute()
    written = []
    setup_path = run_dir / "setup_finetune.yaml"
    render.write_atomic(setup_path, render.dump_yaml(setup, SETUP_HEADER))
    written.append(setup_path)
    activation = render.environment_lines(setup["environment"])
    resources = setup["resources"]
    if setup["type"] == "fine-tuned":
        finetune_yaml = run_dir / "finetune.yaml"
        header = f"# torchtune config of run {setup['run_name']!r} ({setup['training']['recipe']}), rendered by snaketune.\n"
        render.write_atomic(finetune_yaml, render.dump_yaml(render.finetune_config(setup), header))
        script = render.render_script(
            "finetune.slurm.j2",
            run_name=setup["run_name"],
            experiment=setup["experiment"],
            sbatch=render.sbatch_options(
                resources["finetune"],
                f"ft-{setup['run_dir']}",
                str(run_dir / "logs" / "finetune-%j.out"),
                f"snaketune:{setup['run_dir']}:finetune",
            )
            + list(render.FINETUNE_SBATCH_EXTRA),
            environment=activation,
            threads=resources["finetune"]["cpus"],
            run_dir=run_dir,
            command=render.tune_command(setup, finetune_yaml),
        )
        render.write_atomic(run_dir / "finetune.slurm", script, mode=0o755)
        written += [finetune_yaml, run_dir / "finetune.slurm"]
    if any(spec["checkpoints"] for spec in setup["evaluation"]["tasks"].values()):
        path = run_dir / EVALUATE_SCRIPT
        script = render.render_script(
            "evaluate.slurm.j2",
            run_name=setup["run_name"],
            pairs=[f"{task}/{checkpoint}" for task, spec in setup["evaluation"]["tasks"].items() for checkpoint in spec["checkpoints"]],
            sbatch=render.sbatch_options(
                resources["evaluate"],
                f"ev-{setup['run_dir']}",
                str(run_dir / "logs" / "evaluate-%j.out"),
                f"snaketune:{setup['run_dir']}:evaluate",
            ),
            environment=activation,
            threads=resources["evaluate"]["cpus"],
            run_dir=run_dir,
            setup_path=setup_path,
        )
        render.write_atomic(path, script, mode=0o755)
        written.append(path)
    return written


def keep_aside(log: Path) -> Path:
    """Move a finished evaluation log into a new ``eval/logs/superseded-<time>-…/`` folder."""
    keep = Path(tempfile.mkdtemp(prefix=f"superseded-{time.strftime('%Y%m%d-%H%M%S')}-", dir=log.parent))
    log.rename(keep / log.name)
    return keep / log.name
