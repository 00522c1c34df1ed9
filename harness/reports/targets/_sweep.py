"""What Tables 2 and 3 and Figures 3 and val-loss share: the budget sweep's runs (experiments.table3)."""
from __future__ import annotations

from harness import config as hc


def sweep_runs(config, models=None, budgets=None, seeds=None) -> list[str]:
    """The sweep's runs (experiments.table3): every model x method x budget, the sweep's seeds
    unless `seeds` is given; `models`/`budgets` restrict it."""
    sweep = config["experiments"]["table3"]
    out = []
    for model in models or sweep["models"]:
        for method in sweep["methods"]:
            for budget in budgets or sweep["budgets"]:
                out += hc.run_ids(config, model, sweep["dataset"], method, budget, seeds=seeds or sweep.get("seeds"))
    return out
