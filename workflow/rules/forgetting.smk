# Forgetting (harness.forgetting): the base model's mean token loss on a held-out text outside the
# training domain, once per (model, text). Each run's loss after fine-tuning is written by its
# evaluate job (eval/forgetting.json); Table 2 and the Pareto figure join the two. Params hold
# what determines the value (the text's pinned SHA-256, the protocol, the model's dtype), not
# where the data lives.


rule forgetting_base:
    input:
        model=lambda w: model_marker(w.model),
    output:
        f"{RESULTS}/forgetting/{{model}}/{{text}}.json",
    log:
        f"{LOGS}/forgetting_base/{{model}}/{{text}}.log",
    wildcard_constraints:
        text="|".join(_forgetting.TEXTS),
    params:
        model_cfg=lambda w: {"name": w.model, "dtype": CFG["models"][w.model].get("dtype", "float32"),
                             "device": "auto"},
        source_sha256=lambda w: hd.FILES[_forgetting.TEXTS[w.text].relpath][1],
        protocol=_forgetting.PROTOCOL,
    threads: CFG["threads"]
    resources:
        mem_mb=mem("evaluate"),
        runtime=runtime("evaluate"),
        gpu=min(EXE["gpus"], 1),
    conda:
        ENV
    script:
        "../scripts/forgetting_base.py"
