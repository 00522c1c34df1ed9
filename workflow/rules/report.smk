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

for _target in TARGETS:

    rule:
        name:
            _target
        input:
            report_inputs(_target) if not FROM_RECORDS else report_input_function(_target),
        output:
            report_outputs([_target]),
        log:
            f"{LOGS}/report/{_target}.log",
        params:
            target=_target,
            records=target_records(_target),
            out_prefix=lambda w, output: os.path.splitext(output[0])[0],
            # where data lives, and whether the records were just trained or are read from disk
            # (from_records), decide nothing here: a table is a function of its records
            config={k: v for k, v in CFG.items() if k not in ("data_root", "from_records")},
        threads: 1
        resources:
            mem_mb=mem("report"),
            runtime=runtime("report"),
        conda:
            ENV
        script:
            "../scripts/report.py"
