"""Write a smoke run's tiny random stand-in for one registry backbone (fpt_core/smoke.py)."""
import sys
from pathlib import Path

from fpt_core.smoke import write_tiny_backbones

# Uncaught errors go to the log too: sys.excepthook writes to sys.stderr.
sys.stderr = sys.stdout = open(snakemake.log[0], "w")
out = Path(snakemake.output[0])
write_tiny_backbones(out.parent, [snakemake.wildcards.backbone])
print(f"{snakemake.wildcards.backbone}: tiny stand-in in {out}")
