# One job per distinct cell: `fpt train` into results/cells/<cell id>/. The cell id is a hash of
# the resolved cell, so a cell that several ablations share trains once.


rule train:
    input:
        unpack(train_inputs),
    output:
        summary=f"{CELLS_DIR}/{{cell}}/summary.parquet",
        curve=f"{CELLS_DIR}/{{cell}}/curve.parquet",
    params:
        cell=lambda wildcards: fpt_grid.cell_args(GRID.cells[wildcards.cell]),
        out=lambda wildcards, output: os.path.dirname(output.summary),
    log:
        "logs/train/{cell}.log",
    # Inside the cell's directory so that it is committed with the results: a missing
    # benchmark file would count as a missing output and retrain the cell.
    benchmark:
        f"{CELLS_DIR}/{{cell}}/benchmark.tsv"
    wildcard_constraints:
        cell="[0-9a-f]{12}",
    group:
        TRAIN.get("group")
    threads: TRAIN.get("threads", 1)
    resources:
        mem_mb=TRAIN.get("mem_mb", 4000),
        runtime=TRAIN.get("runtime", 60),
        gpu=1 if TRAIN.get("device") == "cuda" else 0,
    conda:
        "../../environment.yml"
    # RUN_ARGS (device, data_dir, ...) is part of the command, not of params: changing it
    # changes no numbers and must not make Snakemake retrain (params are a rerun trigger).
    shell:
        f"fpt train {{params.cell}} {RUN_ARGS} out={{params.out}} > {{log}} 2>&1"
