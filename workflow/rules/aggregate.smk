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
        # where the summaries are; a partial table with no cell finished reads none
        cells_dir=lambda wildcards, input: (
            Path(input.cells[0]).parents[1] if input.cells else STUDY.cells_dir
        ),
    script:
        "../scripts/aggregate.py"
