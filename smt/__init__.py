"""Sparse Matrix Tuning (SMT): train only the most influential l x l blocks of chosen linear weights.

Public API::

    cfg = smt.SMTConfig(block_size=64, budget=0.0084, target_modules=["q_proj", "k_proj", "v_proj"])
    scorer = smt.GradientScorer(model, cfg)
    for batch in warmup_batches:                  # after each backward of the warm-up
        loss(batch).backward(); scorer.accumulate()   # (+ optimizer step in full_ft mode)
    plan = scorer.select()                        # smt.SelectionPlan
    smt.apply_smt(model, plan)                    # only block parameters require grad now
    smt.save_smt(model, path); smt.load_smt(fresh_model, path); smt.merge_smt(model)
"""
from .config import SMTConfig, name_matches
from .layer import SparseLinear, SparseLinearFunction
from .model import apply_smt, load_smt, merge_smt, save_smt, sparse_modules
from .plan import SelectionPlan, layer_index, module_type
from .scoring import (GradientScorer, block_scores, count_parameters, find_target_modules,
                      n_blocks_for_budget, random_plan, select_blocks, split_quota)

__all__ = [
    "SMTConfig", "GradientScorer", "SelectionPlan", "SparseLinear", "SparseLinearFunction",
    "apply_smt", "merge_smt", "save_smt", "load_smt", "sparse_modules",
    "block_scores", "select_blocks", "split_quota", "n_blocks_for_budget", "count_parameters",
    "find_target_modules", "name_matches", "module_type", "layer_index", "random_plan",
]
