localrules:
    scaffold,
    scaffold_finetune,
    scaffold_control,
    report,


rule scaffold:
    input:
        get_scaffold_files(),


rule scaffold_finetune:
    output:
        setup="{run}/setup_finetune.yaml",
        finetune="{run}/finetune.yaml",
        slurm="{run}/finetune.slurm",
    log:
        "{run}/logs/scaffold.log",
    wildcard_constraints:
        run=_alternatives(run.run_dir for run in FINE_TUNED),
    params:
        setup=get_setup,
    run:
        scaffold_run(PLAN, wildcards.run, config, log[0])


rule scaffold_control:
    output:
        setup="{run}/setup_finetune.yaml",
    log:
        "{run}/logs/scaffold.log",
    wildcard_constraints:
        run=_alternatives(run.run_dir for run in CONTROLS),
    params:
        setup=get_setup,
    run:
        scaffold_run(PLAN, wildcards.run, config, log[0])
