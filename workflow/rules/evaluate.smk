# Evaluate one trained run on one suite -> eval/<suite>.json + eval/<task>.predictions.jsonl.
# The job reads the run's record.json and never writes it. A run whose status is not ok gets a
# "skipped" eval/<suite>.json, so tables show it as failed/diverged instead of failing.
# Params hold what determines the result (eval settings and the test files' sha256), not where
# the data lives: moving the data mirror reruns nothing, changing a test file reruns exactly
# the evaluations that read it. The output is flagged update(): Snakemake does not delete the
# previous eval/<suite>.json before the job runs and restores it when the job fails (e.g. on a
# corrupt record.json), so a good evaluation is never lost.
rule evaluate:
    input:
        record=f"{RUN}/record.json",
        model=lambda w: model_marker(w.model),
    output:
        update(f"{RUN}/eval/{{suite}}.json"),
    log:
        f"{LOGS}/evaluate/{RUN_ID}/{{suite}}.log",
    benchmark:
        f"{BENCH}/evaluate/{RUN_ID}/{{suite}}.tsv"
    params:
        eval_cfg=lambda w: _eval_params(w.suite)["eval_cfg"],
        test_sha256=lambda w: _eval_params(w.suite)["test_sha256"],
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
