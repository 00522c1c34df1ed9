"""Causal-LM loss with the output head applied only where a label is set.

With the prompt masked (train_on_inputs false) only the few answer positions carry a loss, yet
a plain `model(**batch).loss` runs the language-model head (SmolLM2: 28 M of 135 M parameters,
a 49 152-word vocabulary) at every position. `causal_lm_loss` computes the same number (mean
cross-entropy over the tokens whose shifted label is not -100, logits upcast to float32, as
transformers' `ForCausalLMLoss`) but applies the head only at those positions.

Three routes, tried in order:

1. "keep": the model's own forward with `logits_to_keep=<boolean (batch, seq) mask>`
   (transformers >= 5 slices the hidden states before the head). It goes through every
   wrapper's forward (peft PeftModel, accelerate's autocast wrapper, DDP, DeepSpeed), so
   gradient synchronisation and mixed precision behave exactly as for `model(**batch)`.
2. "decoder": for an unwrapped model whose forward does not take the mask: run the decoder
   (`get_decoder()` of the causal LM, through peft's `get_base_model()`), gather the hidden
   states at the labelled positions, apply `get_output_embeddings()` there only.
3. "full": `model(**batch).loss` (the head everywhere), where neither applies, e.g. a model
   that rescales or soft-caps its logits after the head.

`loss_route(model)` says which one a model takes; `causal_lm_loss(..., route=...)` forces one
(tests compare all three with `model(**batch).loss`).
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

IGNORE = -100
ROUTES = ("keep", "decoder", "full")
_WRAPPER_ATTRS = ("module", "_orig_mod")  # DDP / DeepSpeed / accelerate wrappers, torch.compile


def _unwrap(model):
    """(causal LM inside every wrapper, whether some wrapper in between has its own forward)."""
    inner, wrapped = model, False
    for _ in range(8):
        wrapped = wrapped or hasattr(inner, "_original_forward")  # accelerate's autocast wrapper
        children = [getattr(inner, a, None) for a in _WRAPPER_ATTRS]
        child = next((c for c in children if isinstance(c, torch.nn.Module)), None)
        if child is not None and not hasattr(inner, "get_output_embeddings"):  # DDP, DeepSpeed, compile
            inner, wrapped = child, True
        elif callable(getattr(inner, "get_base_model", None)):  # peft PeftModel: adapters live inside
            inner = inner.get_base_model()
        else:
            break
    return inner, wrapped


def _rescales_logits(lm) -> bool:
    cfg = getattr(lm, "config", None)
    return any(getattr(cfg, k, None) not in (None, 1.0) for k in ("final_logit_softcapping", "logit_scale",
                                                                  "logits_scaling"))


def _takes_logits_to_keep(lm) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(lm.forward).parameters
    except (TypeError, ValueError):
        return False


def loss_route(model) -> str:
    """The route causal_lm_loss takes for this model: "keep", "decoder" or "full"."""
    lm, wrapped = _unwrap(model)
    if _takes_logits_to_keep(lm):
        return "keep"
    if not wrapped and not _rescales_logits(lm) and hasattr(lm, "get_decoder") \
            and hasattr(lm, "get_output_embeddings") and lm.get_output_embeddings() is not None:
        return "decoder"
    return "full"


def answer_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep, targets): keep[b, t] is True where position t predicts a set label labels[b, t + 1]
    (the last position never does); targets are those labels in row-major order."""
    shifted = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
    keep = shifted != IGNORE
    return keep, shifted[keep]


def _reduce(logits: torch.Tensor, targets: torch.Tensor, reduction: str) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets.to(logits.device), reduction=reduction)


def causal_lm_loss(model, batch: dict, reduction: str = "mean", route: str | None = None) -> torch.Tensor:
    """Mean (or "sum") cross-entropy over the answer tokens of batch (input_ids, attention_mask,
    labels with -100 for positions without a loss), equal to `model(**batch).loss` for "mean".

    model: a transformers causal LM, or one wrapped by peft, accelerate, DDP or DeepSpeed.
    A batch with no set label gives NaN for "mean" (as transformers does) and 0 for "sum".
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', not {reduction!r}")
    route = route or loss_route(model)
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if route == "full":
        loss = model(**batch, use_cache=False).loss
        return loss * int((labels[:, 1:] != IGNORE).sum()) if reduction == "sum" else loss
    keep, targets = answer_positions(labels)
    if route == "keep":
        logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
        if logits.dim() != 2 or logits.shape[0] != targets.numel():  # older transformers: no boolean mask
            raise RuntimeError(f"logits_to_keep with a boolean mask gave logits of shape {tuple(logits.shape)}, "
                               f"expected ({targets.numel()}, vocab); use route='decoder' or 'full'")
        return _reduce(logits, targets, reduction)
    if route == "decoder":
        lm, _ = _unwrap(model)
        hidden = lm.get_decoder()(**inputs, use_cache=False).last_hidden_state
        return _reduce(lm.get_output_embeddings()(hidden[keep]), targets, reduction)
    raise ValueError(f"unknown loss route {route!r}; use one of {ROUTES}")


def n_answer_tokens(labels: torch.Tensor) -> int:
    """Number of tokens causal_lm_loss averages over (shifted labels that are set)."""
    return int((labels[:, 1:] != IGNORE).sum())
