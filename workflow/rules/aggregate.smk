# Every cell's summary and curve in two tables, with each cell's ablation memberships.


rule aggregate:
    input:
        # a finished cell's summary, or an unfinished one's pack (which writes the summary)
        cells=sorted({cell_done(cell) for cell in aggregate_cells()}),
    output:
        table=f"{RESULTS}/aggregate.parquet",
        curves=f"{RESULTS}/curves.parquet",
    params:
        # every cell of the grid, finished or not, so a partial table can name the missing
        cells_dir=lambda wildcards: CELLS_DIR,
        members=GRID.membership(),
        partial=PARTIAL,
    log:
        f"logs/{STUDY}/aggregate.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/aggregate.py"
