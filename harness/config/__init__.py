"""The study's configuration, by concern (one module each; none of them imports this package):

    harness.config.errors    ConfigError, `need` (a name must be defined under a section)
    harness.config.run_ids   the run-id grammar: make_run_id, parse_run_id (the one reader), labels
    harness.config.methods   method entries, variants (`base:`), their Settings, tuned rates
    harness.config.load      strict YAML, `extends:` layering, recipe, schema, cross references
    harness.config.resolve   a run's RunConfig, a suite's EvalConfig, the run ids of a set, paths

Method hyper-parameters are validated by the method's own `Settings` (baselines), the rest by
workflow/schemas/config.schema.yaml and each experiments entry by its target module (passed in by
harness.reports.load_config: this layer knows no target). The Snakefile loads and validates the
config once; jobs receive resolved JSON (RunConfig, EvalConfig) through their rule's params.

The names below are re-exported for brevity (`from harness import config as hc; hc.parse_run_id`).
"""
from harness.config.errors import ConfigError, need
from harness.config.load import (EXTENDS, MIN_PERCENT, REPO_ROOT, SCHEMA_PATH, UNSET, apply_recipe, deep_merge,
                                 load_config, load_layered, load_yaml_strict, resolve_extends)
from harness.config.methods import (check_methods, check_registry, chosen_lr, method_class, method_entry,
                                    method_label, method_ref, registered_name, settings_values, tuned_method)
from harness.config.resolve import (CLOZE_DEVIATION, dataset_spec, eval_cfg, model_dir, model_spec,
                                    primary_metric, profile_run_id, repo_path, resolve_eval, resolve_run, run_dir, run_ids,
                                    suite_of, target_modules, train_set_path, validation_starts, zero_shot_run_id)
from harness.config.run_ids import (FULL_FT, FULL_FT_BUDGET, LR_SUFFIX, RUN_ID_PATTERNS, RUN_ID_TEMPLATE,
                                    VAL_SUFFIX, ZERO_SHOT, ZERO_SHOT_PLACEMENT, budget_label, lr_label,
                                    make_run_id, parse_run_id, val_suite)

_need = need  # the name the target modules use (harness/reports/targets/)
