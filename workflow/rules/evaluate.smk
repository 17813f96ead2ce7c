rule evaluate:
    input:
        unpack(get_evaluate_input),
    output:
        # What the job did, written last. Each (task, checkpoint) gets its own .eval log and
        # sidecar (not declared: a failing pair must not make Snakemake delete the others').
        "{run}/eval/evaluations.json",
    log:
        "{run}/logs/evaluate.log",
    conda:
        "../envs/snaketune.yaml"
    threads: get_threads("evaluate")
    resources:
        **get_resources("evaluate"),
    shell:
        "OMP_NUM_THREADS={threads} python -m snaketune evaluate --setup {input.setup:q} > {log:q} 2>&1"
