# Prepare each model once (safetensors + tokenizer) and each training set once.


rule prepare_model:
    output:
        f"{RES}/models/{{model}}/prepared.json",
    log:
        f"{LOGS}/prepare_model/{{model}}.log",
    params:
        spec=lambda w: hc.model_spec(CFG, w.model),
        out_dir=lambda w, output: os.path.dirname(output[0]),
    threads: CFG["threads"]
    resources:
        mem_mb=mem("prepare"),
        runtime=runtime("prepare"),
    conda:
        ENV
    script:
        "../scripts/prepare_model.py"


rule prepare_data:
    output:
        f"{RES}/data/{{dataset}}/train.json",
    log:
        f"{LOGS}/prepare_data/{{dataset}}.log",
    params:
        spec=lambda w: hc.dataset_spec(CFG, w.dataset),
        data_root=hc.data_root(CFG),
    threads: 1
    resources:
        mem_mb=mem("prepare"),
        runtime=runtime("prepare"),
    conda:
        ENV
    script:
        "../scripts/prepare_data.py"
