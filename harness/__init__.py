"""What every method shares: data, prompts, models, training loop, evaluation, records, reports.

Import the submodules directly (`harness.data`, `harness.evaluate`, ...); this package file
stays empty of heavy imports so that `import harness` is instant.
"""
