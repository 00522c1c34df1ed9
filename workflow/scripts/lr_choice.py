"""Snakemake script: each swept method's learning rate, chosen on the validation split (harness.lr_sweep)."""
from _job import start

start(snakemake.threads, snakemake.log[0])

from harness import lr_sweep

choice = lr_sweep.write_choice(dict(snakemake.params.config), list(snakemake.input.records), snakemake.output[0])
for method, c in choice["methods"].items():
    print(f"{method}: lr {c['chosen']}" + (" (grid edge)" if c["at_edge"] else "")
          + "  " + ", ".join(f"{lr}: {e['value']}" for lr, e in c["rates"].items()))
