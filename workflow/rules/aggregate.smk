# Every cell's summary and curve in two tables, with each cell's ablation memberships, and the
# study's description (results/<study>/study-<hash>.json): what the figures are drawn from
# besides the cells. A changed config is a new hash, a missing file, so the aggregate and the
# figures are made again and the new cells train; an unchanged one finds everything in place.


rule aggregate:
    input:
        cells=[STUDY.summary(cell_id) for cell_id in STUDY.aggregated_cells()],
    output:
        # update: a failed job restores the previous tables instead of deleting them
        table=update(f"{STUDY.results_dir}/aggregate.parquet"),
        curves=update(f"{STUDY.results_dir}/curves.parquet"),
        description=STUDY.description_file,
    log:
        f"{STUDY.logs_dir}/aggregate.log",
    conda:
        "../../environment.yml"
    params:
        description=STUDY.description(),
        # each cell's directory: a cell that is also a pretraining lives with the pretrainings
        cell_dirs={cell_id: STUDY.cell_dir(cell_id) for cell_id in STUDY.grid.cells},
    script:
        "../scripts/aggregate.py"
