# Table 1: step time and peak memory of one method at the table's budget.


rule profile_step:
    input:
        model=lambda w: model_marker(w.model),
        data=hc.train_set_path(CFG, CFG["experiments"]["table1"]["dataset"]),
    output:
        f"{RESULTS}/profile/{{model}}/{{method}}.json",
    log:
        f"{LOGS}/profile/{{model}}/{{method}}.log",
    benchmark:
        f"{BENCH}/profile/{{model}}/{{method}}.tsv"
    params:
        run_cfg=lambda w: hc.resolve_run(CFG, hc.profile_run_id(CFG, w.model, w.method)),
        n_steps=CFG["experiments"]["table1"]["steps"],
    threads: CFG["threads"]
    resources:
        mem_mb=mem("profile"),
        runtime=runtime("profile"),
        gpu=min(EXE["gpus"], 1),
    conda:
        ENV
    script:
        "../scripts/profile_step.py"
