# snaketune: experiment_summary.md -> scaffold -> torchtune LoRA -> inspect-ai -> results.
# Choose the experiment with `--config experiment=path/to/experiment_summary.md`.
from snakemake.utils import min_version

min_version("9.0")


# Absolute: a SLURM job re-runs this file from inside the experiment directory.
configfile: f"{workflow.basedir}/config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/scaffold.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
