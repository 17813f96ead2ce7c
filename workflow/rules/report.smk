rule report:
    input:
        evaluation_logs(),
    output:
        "results/results.csv",
    log:
        "logs/report.log",
    conda:
        "../envs/snaketune.yaml"
    shell:
        "python -m snaketune report --out {output:q} {input:q} > {log:q} 2>&1"
