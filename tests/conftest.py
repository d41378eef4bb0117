import os

# Tiny test models run fastest on one thread, and the suite (with the `fpt` subprocesses it
# starts) must not oversubscribe CI's 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import torch  # noqa: E402

torch.set_num_threads(1)
