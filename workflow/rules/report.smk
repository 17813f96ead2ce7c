rule report:
    input:
        evaluations=evaluation_records(),
        trainings=get_report_trainings(),
        validations=get_report_validations(),
    output:
        table=report(
            "results/results.csv", caption="../report/results.rst", category="Results"
        ),
        summary=report(
            "results/summary.md", caption="../report/summary.rst", category="Results"
        ),
        plots=report(
            directory("results/plots"),
            patterns=["{figure}.png"],
            caption="../report/plots.rst",
            category="Plots",
            labels={"figure": "{figure}"},
        ),
    log:
        "logs/report.log",
    conda:
        "../envs/snaketune.yaml"
    params:
        logs=evaluation_logs(),
    shell:
        "python -m snaketune report . --evaluations {params.logs:q} --trainings {input.trainings:q}"
        " --table {output.table:q} --summary {output.summary:q} --plots {output.plots:q} > {log:q} 2>&1"
