# Every cell's summary and curve in two tables, with each cell's ablation memberships.


rule aggregate:
    input:
        summaries=expand(f"{CELLS_DIR}/{{cell}}/summary.parquet", cell=aggregate_cells()),
        curves=expand(f"{CELLS_DIR}/{{cell}}/curve.parquet", cell=aggregate_cells()),
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
