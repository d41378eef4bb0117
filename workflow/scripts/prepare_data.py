"""Prepare one task's data (generate ListOps offline; fetch datasets where there is internet), or
for a smoke study write its tiny fixture in the real on-disk format."""
import sys

from fpt_core.smoke import write_fixtures
from fpt_core.tasks import prepare_data

# Uncaught errors go to the log too: sys.excepthook writes to sys.stderr.
sys.stderr = sys.stdout = open(snakemake.log[0], "w")
if snakemake.params.fixture:
    write_fixtures(snakemake.params.data_dir, [snakemake.wildcards.task])
else:
    prepare_data(snakemake.wildcards.task, snakemake.params.data_dir, **snakemake.params.options)
