rule evaluate:
    input:
        unpack(get_evaluate_input),
    output:
        # update(): Snakemake must not delete a finished log before a rerun; the job moves
        # it to eval/logs/superseded-<time>-…/ once the new evaluation has succeeded.
        update("{run}/eval/logs/{task}_{checkpoint}.eval"),
    log:
        "{run}/logs/evaluate-{task}-{checkpoint}.log",
    conda:
        "../envs/snaketune.yaml"
    threads: get_threads("evaluate")
    resources:
        **get_resources("evaluate"),
    shell:
        "OMP_NUM_THREADS={threads} python -m snaketune evaluate --setup {input.setup:q}"
        " --task {wildcards.task:q} --checkpoint {wildcards.checkpoint:q} --out {output:q} > {log:q} 2>&1"
