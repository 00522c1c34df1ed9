# Evaluate one trained run on one suite -> eval/<suite>.json + eval/<task>.predictions.jsonl, or
# on the validation split of experiments.lr_sweep (rule evaluate_val) -> val/<suite>_val.json +
# val/<task>.predictions.jsonl: a directory each, so the two splits' predictions never collide.
# The job reads the run's record.json and never writes it. A run whose status is not ok gets a
# "skipped" output, so tables show it as failed/diverged instead of failing.
# Params hold what determines the result (eval settings and the test files' sha256), not where
# the data lives: moving the data mirror reruns nothing, changing a test file reruns exactly
# the evaluations that read it. The output is flagged update(): Snakemake does not delete the
# previous output before the job runs and restores it when the job fails (e.g. on a corrupt
# record.json), so a good evaluation is never lost.
# A test evaluation of a run at a swept method's rate also reads the sweep's choice (lr_choice_input):
# the test set is scored only at the chosen rate, and its output carries the choice.
for _name, _dir in (("evaluate", "eval"), ("evaluate_val", "val")):

    rule:
        name:
            _name
        input:
            unpack(lr_choice_input),
            record=f"{RUN}/record.json",
            model=lambda w: model_marker(w.model),
        output:
            update(f"{RUN}/{_dir}/{{suite}}.json"),
        log:
            f"{LOGS}/{_name}/{RUN_ID}/{{suite}}.log",
        benchmark:
            f"{BENCH}/{_name}/{RUN_ID}/{{suite}}.tsv"
        params:
            eval_cfg=lambda w: _eval_params(w.suite)["eval_cfg"],
            test_sha256=lambda w: _eval_params(w.suite)["test_sha256"],
            run_dir=lambda w, input: os.path.dirname(input.record),
        wildcard_constraints:  # val/ holds validation splits only (their eval/ and val/ paths never overlap)
            suite=r"[A-Za-z0-9_-]+_val" if _dir == "val" else r"[A-Za-z0-9_-]+",
        threads: CFG["threads"]
        resources:
            mem_mb=mem("evaluate"),
            runtime=runtime("evaluate"),
            gpu=min(EXE["gpus"], 1),
        conda:
            ENV
        script:
            "../scripts/evaluate.py"
