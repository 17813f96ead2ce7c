localrules:
    scaffold,
    scaffold_finetune,
    scaffold_control,
    report,


rule scaffold:
    input:
        get_scaffold_files,


rule scaffold_finetune:
    output:
        setup="{run}/setup_finetune.yaml",
        finetune="{run}/finetune.yaml",
        slurm="{run}/finetune.slurm",
    log:
        "{run}/logs/scaffold.log",
    wildcard_constraints:
        run=rf"(?!(?:{CONTROL_DIRS})/)[^/]+",
    conda:
        "../envs/snaketune.yaml"
    params:
        payload=get_scaffold_payload,
    shell:
        "python -m snaketune scaffold --experiment-dir . --payload {params.payload:q} > {log:q} 2>&1"


rule scaffold_control:
    output:
        setup="{run}/setup_finetune.yaml",
    log:
        "{run}/logs/scaffold.log",
    wildcard_constraints:
        run=CONTROL_DIRS,
    conda:
        "../envs/snaketune.yaml"
    params:
        payload=get_scaffold_payload,
    shell:
        "python -m snaketune scaffold --experiment-dir . --payload {params.payload:q} > {log:q} 2>&1"
