# Learning rates tuned per method (experiments.lr_sweep; harness/lr_sweep.py holds the rule).
# Each swept rate is its own run (run id `<method>@lr<rate>`), evaluated on the validation split
# (rule evaluate_val: val/<suite>_val.json). The checkpoint chooses each method's rate from those
# evaluations and writes <results>/lr_sweep/choice.json; only then are the other targets' runs
# known (common.smk: target_config), since their run ids name the chosen rates. The sweep's run at
# the chosen rate is Table 2's first seed, so nothing is trained twice.
if SWEEP:

    checkpoint lr_choice:
        input:
            evals=lambda w: [eval_file(r, "validation") for r in lr_sweep.run_ids(CFG)],
            records=lambda w: [f"{hc.run_dir(CFG, r)}/record.json" for r in lr_sweep.run_ids(CFG)],
        output:
            str(CHOICE),
        log:
            f"{LOGS}/lr_sweep/lr_choice.log",
        params:
            config={k: v for k, v in CFG.items() if k not in ("data_root", "from_records")},
        threads: 1
        resources:
            mem_mb=mem("report"),
            runtime=runtime("report"),
        conda:
            ENV
        script:
            "../scripts/lr_choice.py"
