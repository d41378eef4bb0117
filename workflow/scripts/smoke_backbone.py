"""Write a smoke study's tiny random stand-in for one registry backbone (fpt_core/smoke.py)."""
import sys
from pathlib import Path

from fpt_core.backbones.registry import write_tiny_backbones

# Uncaught errors go to the log too: sys.excepthook writes to sys.stderr.
sys.stderr = sys.stdout = open(snakemake.log[0], "w")
out = Path(snakemake.output[0])
write_tiny_backbones(out.parent, [out.name])
print(f"{out.name}: tiny stand-in in {out}")
