"""Every ablation's figure and table, and the attention figures, from the aggregated results."""
import sys

from fpt_core.figures import draw_ablation, draw_attention

# Uncaught errors go to the log too: sys.excepthook writes to sys.stderr.
sys.stderr = sys.stdout = open(snakemake.log[0], "w")
for (name, spec), image, table in zip(snakemake.params.ablations.items(),
                                      snakemake.output.images, snakemake.output.tables):
    draw_ablation(
        snakemake.input.table, snakemake.input.curves, name, kind=spec["kind"],
        title=spec["title"], metric=snakemake.params.metric,
        reported_path=snakemake.params.reported, png=image, md=table,
        thresholds=spec["thresholds"], paper_notes=spec["paper_notes"],
    )
    print(f"{name}: {image}, {table}")
for data, image in zip(snakemake.input.attention, snakemake.output.attention):
    draw_attention(data, image)
    print(f"attention: {image}")
