# snaketune: experiment_summary.md -> scaffold -> torchtune LoRA -> inspect-ai -> results.
# Choose the experiment with `--config experiment=path/to/experiment_summary.md`.
from collections import Counter

from snakemake.utils import min_version

from snaketune import journal
from snaketune.workflow import store_dataset_sizes

min_version("9.0")


# Absolute: a SLURM job re-runs this file from inside the experiment directory.
configfile: f"{workflow.basedir}/config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/scaffold.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/validate.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_output(),


# Bookkeeping for people: <experiment>/run-experiment.log, and the summary's ## Status tables
# when it has that section. Only the snakemake the user started writes them (never a dry run).
onstart:
    if workflow.exec_mode == ExecMode.DEFAULT:
        store_dataset_sizes(PLAN)
        journal.workflow_started(
            PLAN,
            Counter(job.rule.name for job in workflow.dag.needrun_jobs()),
            workflow.executor_plugin.name,
        )


onsuccess:
    if workflow.exec_mode == ExecMode.DEFAULT:
        journal.workflow_ended(PLAN, success=True)


onerror:
    if workflow.exec_mode == ExecMode.DEFAULT:
        journal.workflow_ended(PLAN, success=False)
