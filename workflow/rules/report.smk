rule report:
    input:
        evaluation_logs(),
    output:
        "results/results.csv",
    log:
        "logs/report.log",
    params:
        meta=get_report_meta(),
    run:
        write_report(input, params.meta, output[0], log[0])
