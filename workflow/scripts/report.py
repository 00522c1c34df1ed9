"""Snakemake script: one table or figure from run records and their evaluations (harness.reports)."""
from _job import start

start(snakemake.threads, snakemake.log[0])

from harness import reports

params = snakemake.params
reports.make(params.target, dict(params.config), list(params.records), params.out_prefix)
if reports.target(params.target).kind == "table":  # the table rendered for `snakemake --report` (harness.report_html)
    from harness.report_html import table_page

    table_page(params.out_prefix + ".csv", params.out_prefix + ".html")
else:  # the figure as one HTML file (the PNG as a data URI): what the report's landing page includes
    from harness.report_html import figure_page

    figure_page(params.out_prefix + ".png", params.out_prefix + ".html", reports.target(params.target).title)
