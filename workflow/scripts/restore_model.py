"""Rebuild the trained weights of a finished cell by training it again (fpt_core/pack.py)."""
import sys

import torch

from fpt_core import devices
from fpt_core.pack import restore_model

# Uncaught errors go to the log too: sys.excepthook writes to sys.stderr.
sys.stderr = sys.stdout = open(snakemake.log[0], "w")
# Before CUDA starts: the job's GPUs of this machine, for it alone (fpt_core/devices.py).
devices.claim(getattr(snakemake.resources, "gpu", 0))
torch.set_num_threads(snakemake.threads)
restore_model(snakemake.params.job)
