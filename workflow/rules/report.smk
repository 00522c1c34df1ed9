# One rule per table and figure: `snakemake table2`, `snakemake figure4`, ...
# Inputs are the evaluation outputs of exactly the runs the target needs (or Table 1's profiles);
# a run shared by several targets is one job. Each target is a builder registered in
# harness.report (TABLES / FIGURES; Table 1 comes from harness.profile).
from harness import report as _report

_unbuilt = [t for t in TARGETS if t != "table1" and t not in _report.TABLES and t not in _report.FIGURES]
if _unbuilt:
    raise ValueError(f"harness.config.TARGETS names {_unbuilt}, which harness.report does not build; "
                     f"register a builder with @report.table/@report.figure (built: "
                     f"{', '.join(list(_report.TABLES) + list(_report.FIGURES))})")

from harness import report_html as _report_html

_ungrouped = [t for t in TARGETS if t not in _report_html.REPORT_GROUPS]
_uncaptioned = [t for t in TARGETS if not os.path.isfile(os.path.join(workflow.basedir, f"workflow/report/{t}.rst"))]
if _ungrouped or _uncaptioned:
    raise ValueError(f"targets without a report section (harness.report_html.REPORT_GROUPS): {_ungrouped}; "
                     f"without a caption workflow/report/<target>.rst: {_uncaptioned}; add them")


for _target in TARGETS:

    rule:
        name:
            _target
        input:
            target_inputs(_target),
        output:
            flagged_outputs(_target),
        log:
            f"{LOGS}/report/{_target}.log",
        params:
            target=_target,
            records=target_records(_target),
            out_prefix=lambda w, output: os.path.splitext(output[0])[0],
            config={k: v for k, v in CFG.items() if k != "data_root"},  # where data lives decides nothing here
            facts=_report_html.caption_facts(CFG, _target),  # for the report's caption (workflow/report/)
        threads: 1
        resources:
            mem_mb=mem("report"),
            runtime=runtime("report"),
        conda:
            ENV
        script:
            "../scripts/report.py"
