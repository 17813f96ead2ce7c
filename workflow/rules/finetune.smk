from snaketune.render import FINETUNE_SBATCH_EXTRA


rule finetune:
    input:
        unpack(get_finetune_input),
    output:
        "{run}/finetune_manifest.json",
    log:
        "{run}/logs/finetune.log",
    conda:
        "../envs/snaketune.yaml"
    threads: get_threads("finetune")
    resources:
        **get_resources("finetune"),
        slurm_extra=" ".join(FINETUNE_SBATCH_EXTRA),
    params:
        command=get_tune_command,
    # exec: the job's shell would die of SLURM's SIGTERM (preemption, time limit) and take the
    # job down with it; the finetune job itself saves, waits for SLURM to end it and passes on
    shell:
        "OMP_NUM_THREADS={threads} exec python -m snaketune finetune --run-dir {wildcards.run:q}"
        " -- {params.command} >> {log:q} 2>&1"
