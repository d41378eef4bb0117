"""Make a registered backbone's pretrained weights available before its cells train.

The registry's `weights()` converts SmolLM2's GGUF file once into the cache and returns a local
directory; for a hub model it returns the repository id, which is downloaded here, once, on the
machine that runs Snakemake (a cluster's compute nodes often have no internet).
"""
import sys
from pathlib import Path

from fpt_core.backbones import resolve

# Uncaught errors go to the log too: sys.excepthook writes to sys.stderr.
sys.stderr = sys.stdout = open(snakemake.log[0], "w")
weights = resolve(snakemake.wildcards.backbone).weights
source = str(weights()) if weights is not None else None
if source is not None and not Path(source).is_dir():
    from huggingface_hub import snapshot_download

    snapshot_download(source)
print(f"{snakemake.wildcards.backbone}: weights at {source}")
