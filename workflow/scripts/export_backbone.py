"""Export a pretrained cell's model as a backbone directory that cells load with backbone=DIR."""
import sys

from fpt_core.model import export_backbone
from fpt_core.train import load_trained

# Uncaught errors go to the log too: sys.excepthook writes to sys.stderr.
sys.stderr = sys.stdout = open(snakemake.log[0], "w")
_, model, _ = load_trained(snakemake.input.model)
export_backbone(model, snakemake.output[0])
