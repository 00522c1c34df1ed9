"""`python -m harness.tasks`: regenerate the lm-eval task files from the task table."""
from harness.tasks import write_yamls

for path in write_yamls():
    print(path)
