"""Snakemake script: one table or figure from run records and their evaluations (harness.report)."""
from _job import start

start(snakemake.threads, snakemake.log[0])

from harness import report

name, params = snakemake.params.target, snakemake.params
make = report.make_figure if name in report.FIGURES else report.make_table
make(name, dict(params.config), list(params.records), params.out_prefix)
if name not in report.FIGURES:  # the table rendered for `snakemake --report` (harness.report_html)
    from harness.report_html import table_page

    table_page(params.out_prefix + ".csv", params.out_prefix + ".html")
