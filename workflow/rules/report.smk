rule report:
    input:
        evaluations=evaluation_logs(),
        trainings=get_report_trainings(),
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
    shell:
        "python -m snaketune report . --evaluations {input.evaluations:q} --trainings {input.trainings:q}"
        " --table {output.table:q} --summary {output.summary:q} --plots {output.plots:q} > {log:q} 2>&1"
