# SMT benchmark: every table and figure of the paper from one command each.
#   snakemake --cores all table2                      (default config, this CPU)
#   snakemake --cores 2 --configfile config/test.yaml all         (tiny smoke test)
#   snakemake --configfile config/paper.yaml --profile workflow/profiles/slurm all
#   snakemake --cores all --config from_records=true --forceall all
#                       (every table and figure rebuilt from the records on disk, e.g. the committed
#                        ones of a fresh clone: no prepare/train/evaluate/profile rule is in the DAG)
# The config is validated against workflow/schemas/config.schema.yaml before any job starts.
from snakemake.utils import min_version

min_version("9.0")

# `snakemake --report report.html`: every table and figure, grouped by the paper's tables
# (workflow/rules/report.smk, captions in workflow/report/).
report: "workflow/report/workflow.rst"


# A --configfile replaces the default config instead of being merged into it.
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"


rule all:
    input:
        report_outputs(TARGETS),
    default_target: True


# from_records: the records, evaluations and Table 1's profile are plain inputs (no rule makes
# them), so nothing is prepared, trained, evaluated or measured and a missing one is an error naming it.
if not FROM_RECORDS:

    include: "workflow/rules/prepare.smk"
    include: "workflow/rules/train.smk"
    include: "workflow/rules/evaluate.smk"
    include: "workflow/rules/lr_sweep.smk"
    include: "workflow/rules/forgetting.smk"
    include: "workflow/rules/profile.smk"


include: "workflow/rules/report.smk"
