# Train one run: <model>/<dataset>/<method>/b<budget%>/<placement>/s<seed> -> record.json (+ delta).
# A run that fails or diverges still succeeds as a job: its record.json (status, error, loss curve)
# is kept and shown in the tables; retrain it with `--forcerun <its record.json>` (onstart lists
# them). Checkpoints stay in the run directory, tied to the run's fingerprint, so
# `--rerun-incomplete` resumes an interrupted run and a changed config starts it afresh.
# Every attempt is appended to the run's attempts.jsonl (not an output: never deleted).
# execution.launcher (harness.launch): python runs the script in-process; ddp runs it under
# `torchrun --nproc_per_node N` (data parallel); deepspeed under `accelerate launch --use_deepspeed
# --zero_stage 2` (the paper's launcher: ZeRO-2, optimizer offload for full FT and SMT's full-FT
# warm-up); accelerate under `accelerate launch {accelerate_args}`.

# `snakemake -n -p` prints the command; it is the same for every launcher but its prefix.

from harness.launch import launch_prefix


rule train:
    input:
        unpack(train_inputs),
    output:
        f"{RUN}/record.json",
    log:
        f"{LOGS}/train/{RUN_ID}.log",
    benchmark:
        f"{BENCH}/train/{RUN_ID}.tsv"
    params:
        # the run's RunConfig (harness.run_config) as JSON: what the job trains and its record keeps
        run_cfg=lambda w: json.dumps(hc.resolve_run(CFG, run_id(w)).to_json()),
        out_dir=lambda w, output: os.path.dirname(output[0]),
        launch=launch_prefix(EXE),
    threads: CFG["threads"]
    resources:
        mem_mb=mem("train"),
        runtime=runtime("train"),
        gpu=EXE["gpus"],
    conda:
        ENV
    shell:
        "{params.launch} workflow/scripts/train.py"
        " --run-cfg {params.run_cfg:q} --out-dir {params.out_dir:q} --threads {threads}"
        " > {log:q} 2>&1"
