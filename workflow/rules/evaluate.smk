# Evaluate one trained run on one suite -> eval/<suite>.json (+ predictions, record["eval"]).


rule evaluate:
    input:
        record=f"{RUN}/record.json",
        model=lambda w: model_marker(w.model),
    output:
        f"{RUN}/eval/{{suite}}.json",
    log:
        f"{LOGS}/evaluate/{RUN_ID}/{{suite}}.log",
    benchmark:
        f"{BENCH}/evaluate/{RUN_ID}/{{suite}}.tsv"
    params:
        eval_cfg=lambda w: hc.eval_cfg(CFG, w.suite),
        run_dir=lambda w, input: os.path.dirname(input.record),
    threads: CFG["threads"]
    resources:
        mem_mb=mem("evaluate"),
        runtime=runtime("evaluate"),
        gpu=min(EXE["gpus"], 1),
    conda:
        ENV
    script:
        "../scripts/evaluate.py"
