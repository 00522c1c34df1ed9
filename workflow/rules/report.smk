# One rule per table and figure: `snakemake table2`, `snakemake figure4`, ...
# Inputs are the evaluation outputs of exactly the runs the target needs (or Table 1's profile);
# a run shared by several targets is one job. Each target is one module under
# harness/reports/targets/ (which runs it needs, and how it is built).

# A target's report section and caption are in its module too (SECTION, CAPTION; common.smk: flagged_outputs).
from harness import report_html as _report_html


for _target in TARGETS:

    rule:
        name:
            _target
        input:
            report_input_function(_target),  # a function: its runs may wait for the lr_choice checkpoint
        output:
            flagged_outputs(_target),
        log:
            f"{LOGS}/report/{_target}.log",
        params:
            target=_target,
            records=lambda w, t=_target: target_records(t),
            out_prefix=lambda w, output: os.path.splitext(output[0])[0],
            # where data lives, and whether the records were just trained or are read from disk
            # (from_records), decide nothing here: a table is a function of its records (and of
            # the sweep's choice of rates, lr_chosen, which names them)
            config=lambda w, t=_target: {k: v for k, v in target_config(t).items() if k not in ("data_root", "from_records")},
            facts=_report_html.caption_facts(CFG, _target),  # for the report's caption (its module's CAPTION)
        threads: 1
        resources:
            mem_mb=mem("report"),
            runtime=runtime("report"),
        conda:
            ENV
        script:
            "../scripts/report.py"
