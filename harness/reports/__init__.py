"""Every table and figure of the study: one module per target under harness/reports/targets/.

A target module holds everything about its target, so nothing generic (the workflow, the HTML
report, this package) names a target. The registry imports every module of targets/ whose name
does not start with `_` (shared helpers live in `_`-modules, e.g. targets/_sweep.py); what a
module declares (the protocol):

    KIND = "table" | "figure"                    # required
    TITLE = "Table 9: ..."                       # required: printed above the table / figure
    def runs(config, exp) -> list[str]           # required: the run ids it needs (harness.config.run_ids)
    def build(ctx) -> pandas.DataFrame           # a table, from harness.reports.cells.Ctx
    def draw(ctx) -> (figure, frame, caption)    # a figure, and the data it draws

    SECTION = ("Table 9: ...", "table")          # the report's (category, subcategory); default (TITLE, KIND)
    CAPTION = "..."                              # the report's caption (reStructuredText, a Jinja template over
                                                 # snakemake.params.facts: runs, seeds, n, config);
                                                 # default: the title and the facts (DEFAULT_CAPTION)
    EXPERIMENT = "table9"                        # the experiments entry it reads (default: its name)
    SCHEMA = {...}                               # JSON schema of experiments.<EXPERIMENT> (if it owns it)
    def check(config, exp)                       # further checks of its entry when the config loads
    EVAL_SPLIT = "validation"                    # its runs are read on the validation split (default "test")
    SHOWS_FORGETTING = True                      # its inputs include the base model's forgetting values
    BEFORE_LR_CHOICE = True                      # its runs make experiments.lr_sweep's choice (named before it)
    def files(config, exp) -> list[str]          # built from these files, not run records (Table 1's profile),
    def build_from_files(paths)                  #   by build_from_files -> (frame, ids, title)
    def profile_job(config, exp) -> dict         # the job that makes files() (rule profile_<name>, profile.smk)
    def extra_inputs(config, exp, from_records)  # further input files (Table 1: the GPU check's JSON)
    def caption_facts(config, exp) -> dict       # the caption's facts, where the default does not fit
    def after_write(out_prefix)                  # further outputs after the table is written

Adding a table is adding one module (and, if it reads settings, its `experiments:` entry in a
config): the registry finds it, `snakemake <name>` builds it, `all` includes it, and the report
shows it in its SECTION with its CAPTION (workflow/rules/report.smk writes the caption file). A
target whose experiments entry a config does not have is not part of that config's `all`.

The method every other is compared with is the config's `proposed` (default smt), not a
name written into the targets.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
import pathlib
import pkgutil
from types import ModuleType

from harness import config as hc
from harness import provenance

_PACKAGE = "harness.reports.targets"
_DIR = pathlib.Path(__file__).resolve().parent / "targets"


DEFAULT_CAPTION = """{title}

**Runs:** {{{{ snakemake.params.facts.runs }}}}; **seeds:** {{{{ snakemake.params.facts.seeds }}}}; **n:** {{{{ snakemake.params.facts.n }}}} (config ``{{{{ snakemake.params.facts.config }}}}``).
"""


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    kind: str
    title: str
    experiment: str
    module: ModuleType

    @property
    def section(self) -> tuple[str, str]:
        """(category, subcategory) of the report (the module's SECTION, default its title and kind)."""
        return tuple(getattr(self.module, "SECTION", (self.title, self.kind)))

    @property
    def caption(self) -> str:
        """The report's caption (the module's CAPTION, default the title and the config's facts)."""
        return getattr(self.module, "CAPTION", None) or DEFAULT_CAPTION.format(title=self.title)

    def has(self, hook: str) -> bool:
        return hasattr(self.module, hook)

    def exp(self, config: dict) -> dict:
        """Its experiments entry in `config`."""
        return config["experiments"][self.experiment]


def _discover() -> dict[str, Target]:
    found = {}
    for info in sorted(pkgutil.iter_modules([str(_DIR)]), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{_PACKAGE}.{info.name}")
        kind = getattr(mod, "KIND", None)
        if kind not in ("table", "figure") or not hasattr(mod, "runs") or not hasattr(mod, "TITLE"):
            raise TypeError(f"{mod.__file__}: a target module needs KIND ('table' or 'figure'), TITLE and runs(); "
                            "see harness/reports/__init__.py")
        if not hasattr(mod, "build" if kind == "table" else "draw"):
            raise TypeError(f"{mod.__file__}: a {kind} module needs {'build' if kind == 'table' else 'draw'}(ctx)")
        found[info.name] = Target(info.name, kind, mod.TITLE, getattr(mod, "EXPERIMENT", info.name), mod)
    # tables first, then figures, each by name: the order `all` lists them in
    return dict(sorted(found.items(), key=lambda kv: (kv[1].kind != "table", kv[0])))


REGISTRY: dict[str, Target] = _discover()
TABLES = tuple(n for n, t in REGISTRY.items() if t.kind == "table")
FIGURES = tuple(n for n, t in REGISTRY.items() if t.kind == "figure")
TARGETS = TABLES + FIGURES


def experiment_schemas() -> dict:
    """experiments.<name> -> its JSON schema, from the target modules that own an entry."""
    return {t.experiment: copy.deepcopy(t.module.SCHEMA) for t in REGISTRY.values() if hasattr(t.module, "SCHEMA")}


@dataclasses.dataclass(frozen=True)
class Experiment:
    """An experiments entry as harness.config.load_config checks it: the schema of the target that
    owns it and every check of the targets that read it."""

    SCHEMA: dict
    checks: tuple

    def check(self, config: dict, entry: dict) -> None:
        for check in self.checks:
            check(config, entry)


def experiments() -> dict[str, Experiment]:
    """experiments.<name> -> its Experiment (schema and checks), from the target modules."""
    schemas = experiment_schemas()
    return {name: Experiment(schema, tuple(t.module.check for t in REGISTRY.values()
                                           if t.experiment == name and hasattr(t.module, "check")))
            for name, schema in schemas.items()}


def load_config(src) -> dict:
    """The config (a path or a mapping) loaded and validated with every experiments entry checked by
    the targets that own it (harness.config.load_config); what the Snakefile calls, once."""
    return hc.load_config(src, experiments())


def configured(config: dict) -> list[str]:
    """The targets a config builds (`all`): those whose experiments entry it has."""
    return [name for name, t in REGISTRY.items() if t.experiment in config["experiments"]]


def target(name: str) -> Target:
    if name not in REGISTRY:
        raise hc.ConfigError(f"unknown target {name!r}; use one of {', '.join(TARGETS)} or all")
    return REGISTRY[name]


def _runs(config: dict, name: str) -> list[str]:
    t = target(name)
    if t.experiment not in config["experiments"]:
        raise hc.ConfigError(f"target {name} reads experiments.{t.experiment}, which config {config.get('name')!r} "
                             f"does not define; add it (see {t.module.__file__})")
    return t.module.runs(config, config["experiments"][t.experiment])


def expand_runs(config: dict, name: str) -> list[str]:
    """Run ids a target needs ('all' for every configured target), each once, in a stable order."""
    names = configured(config) if name == "all" else [name]
    return list(dict.fromkeys(r for n in names for r in _runs(config, n)))


def files(config: dict, name: str) -> list[str] | None:
    """The files a target is built from instead of run records (its module's `files`; Table 1:
    its profile JSON), None for a target built from run records."""
    t = target(name)
    return list(t.module.files(config, t.exp(config))) if t.has("files") else None


def extra_inputs(config: dict, name: str, from_records: bool) -> list[str]:
    """Further input files of a target (its module's `extra_inputs`), none by default."""
    t = target(name)
    return list(t.module.extra_inputs(config, t.exp(config), from_records)) if t.has("extra_inputs") else []


def eval_split(name: str) -> str:
    """"test" (default) or "validation": the split a target's runs are read on."""
    return getattr(target(name).module, "EVAL_SPLIT", "test")


def build_table(name: str, config: dict, record_paths):
    """(frame with attrs footnotes/deviations, run ids, title) of table `name`."""
    from harness.reports.cells import Ctx
    from harness.reports.runs import load_run
    from harness.reports.write import deviations

    t = target(name)
    if t.kind != "table":
        raise ValueError(f"{name} is a figure; use make_figure")
    if t.has("build_from_files"):  # a target built from files(), not run records (Table 1: a profile JSON)
        return t.module.build_from_files(record_paths)
    runs = [load_run(p) for p in record_paths]
    ctx = Ctx(name, config, runs)
    df = t.module.build(ctx)
    df.attrs.update(footnotes=ctx.notes.items, deviations=deviations(runs),
                    provenance=provenance.trained_at([r.record for r in runs]))  # the commits they trained at
    return df, [r.run_id for r in runs], t.title


def make_table(name: str, config: dict, record_paths, out_prefix):
    """Build table `name` from run records (Table 1: its profile JSON) and write CSV/MD/TeX."""
    from harness.reports.write import write_table

    df, ids, title = build_table(name, config, record_paths)
    write_table(df, title, config, ids, out_prefix)
    if target(name).has("after_write"):  # a target's further outputs (Table 1: its GPU table)
        target(name).module.after_write(out_prefix)
    return df


def figure_data(name: str, config: dict, record_paths) -> tuple:
    """(matplotlib figure, data frame drawn, caption) of figure `name`, without writing anything."""
    from harness.reports.cells import Ctx
    from harness.reports.runs import load_run

    t = target(name)
    if t.kind != "figure":
        raise ValueError(f"{name} is a table; use make_table")
    return t.module.draw(Ctx(name, config, [load_run(p) for p in record_paths]))


def make_figure(name: str, config: dict, record_paths, out_prefix):
    """Draw figure `name`; write <out_prefix>.png, .pdf and the data drawn as <out_prefix>.data.csv."""
    from harness.reports.runs import load_run
    from harness.reports.write import write_figure

    fig, frame, caption = figure_data(name, config, record_paths)
    return write_figure(fig, frame, caption, target(name).title, config, [load_run(p) for p in record_paths],
                        out_prefix)


def make(name: str, config: dict, record_paths, out_prefix):
    """make_table or make_figure, by the target's kind (what the Snakemake report rule calls)."""
    return (make_table if target(name).kind == "table" else make_figure)(name, config, record_paths, out_prefix)
