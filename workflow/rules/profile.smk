# Table 1: ONE job measures every method of experiments.table1 side by side against the frozen
# floor (same model, same batches, round-robin rounds; harness.profile.profile_table1).


rule profile_table1:
    input:
        model=model_marker(CFG["experiments"]["table1"]["model"]),
        data=hc.train_set_path(CFG, CFG["experiments"]["table1"]["dataset"]),
    output:
        profile_file(),
    log:
        f"{LOGS}/profile/{CFG['experiments']['table1']['model']}/table1.log",
    benchmark:
        f"{BENCH}/profile/{CFG['experiments']['table1']['model']}/table1.tsv"
    params:
        runs={m: hc.resolve_run(CFG, hc.profile_run_id(CFG, model, m)).to_json() for model, m in reports.expand_profiles(CFG)},
        table1=CFG["experiments"]["table1"],
    threads: CFG["experiments"]["table1"].get("threads") or CFG["threads"]
    resources:
        mem_mb=mem("profile"),
        runtime=runtime("profile"),
        gpu=min(EXE["gpus"], 1),
    conda:
        ENV
    script:
        "../scripts/profile_step.py"
