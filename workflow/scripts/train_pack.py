"""Train a pack's cells one after another in this one process (fpt_core/pack.py)."""
import sys

import torch

from fpt_core import devices
from fpt_core.pack import train_pack
from fpt_core.train import Preempted

# Uncaught errors go to the log too: sys.excepthook writes to sys.stderr.
sys.stderr = sys.stdout = open(snakemake.log[0], "a", buffering=1)
# The GPUs this job holds, of this machine's, for this job alone; before CUDA starts, which
# reads CUDA_VISIBLE_DEVICES once (fpt_core/devices.py).
devices.claim(getattr(snakemake.resources, "gpu", 0))
# The job's threads, as `fpt train` gets them from OMP_NUM_THREADS: more than were reserved
# make small matrix products wait on each other (and on other jobs' threads).
torch.set_num_threads(snakemake.threads)
try:
    failed = train_pack(snakemake.params.jobs, snakemake.params.run)
except Preempted as e:
    sys.exit(128 + e.signum)
if failed:
    sys.exit(f"{len(failed)} of {len(snakemake.params.jobs)} cells failed: {', '.join(failed)}")
