"""Every ablation's figure and table, and the attention figures, from the aggregated results and
the study's description."""
import json
import sys

from fpt_core.figures import draw_ablation, draw_attention

# Uncaught errors go to the log too: sys.excepthook writes to sys.stderr.
sys.stderr = sys.stdout = open(snakemake.log[0], "w")
description = json.loads(open(snakemake.input.description).read())
for (name, spec), image, table, latex in zip(description["ablations"].items(), snakemake.output.images,
                                             snakemake.output.tables, snakemake.output.latex):
    draw_ablation(
        snakemake.input.table, snakemake.input.curves, name, kind=spec["kind"],
        title=spec["title"], metric=description["metric"],
        reported_path=description["reported"], png=image, md=table, tex=latex,
        thresholds=spec["thresholds"], paper_notes=spec["paper_notes"], reference=spec["reference"],
        select=spec["select"],
    )
    print(f"{name}: {image}, {table}")
for data, image in zip(snakemake.input.attention, snakemake.output.attention):
    draw_attention(data, image)
    print(f"attention: {image}")
