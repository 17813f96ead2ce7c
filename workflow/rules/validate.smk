rule validate:
    input:
        unpack(get_validate_input),
    output:
        # the validation losses of epochs trained without validation (the manifest stays the
        # finetune job's): written last, for the training it read
        "{run}/validation_losses.json",
    log:
        "{run}/logs/validate.log",
    conda:
        "../envs/snaketune.yaml"
    threads: get_threads("finetune")
    resources:
        **get_resources("finetune"),
    shell:
        "OMP_NUM_THREADS={threads} python -m snaketune validate --run-dir {wildcards.run:q} > {log:q} 2>&1"
