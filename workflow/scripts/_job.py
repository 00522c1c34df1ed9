"""Job set-up shared by the thin scripts: thread limits and logging to the rule's log file."""
import logging
import os
import sys


def start(threads: int, log_path: str | None) -> None:
    """Limit every math library to `threads` and send stdout, stderr and logging to `log_path`.

    Call before importing torch.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    if log_path:
        os.makedirs(os.path.dirname(log_path) or ".", exist_ok=True)
        handle = open(log_path, "a", buffering=1)
        sys.stdout = sys.stderr = handle
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
    import torch

    torch.set_num_threads(threads)
