rule finetune:
    input:
        # ancient: re-rendering an unchanged finetune.yaml must not retrain; a change in
        # what training depends on reaches this rule through params.training.
        config=ancient("{run}/finetune.yaml"),
    output:
        "{run}/finetune_manifest.json",
    log:
        "{run}/logs/finetune.log",
    conda:
        "../envs/snaketune.yaml"
    threads: get_threads("finetune")
    resources:
        **get_resources("finetune"),
    params:
        training=get_training,
        command=get_tune_command,
    shell:
        "OMP_NUM_THREADS={threads} python -m snaketune finetune --run-dir {wildcards.run:q}"
        " -- {params.command} >> {log:q} 2>&1"
