# Training. Cells are content-addressed: results/cells/<cell id>/, the id a hash of the resolved
# cell, so a cell that several ablations (or studies) share trains once.
#
# With `train: pack_cells: N` > 1 the unfinished cells go in packs of at most N (common.smk,
# fpt_core/pack.py), each pack one job and one process that trains its cells one after
# another: imports and backbone loads are paid once per pack, not per cell. A pack's flag file
# stands for its cells in the DAG; each cell still writes its own directory and its own log
# logs/train/<cell id>.log. With pack_cells 1, each cell is its own `train` job.


rule train_pack:
    input:
        unpack(pack_inputs),
    output:
        touch(f"{PACKS_DIR}/{{pack}}.done"),
    params:
        jobs=lambda wildcards: pack_jobs(wildcards.pack),
        summary=lambda wildcards: pack_message(wildcards.pack),
    log:
        "logs/train/pack-{pack}.log",
    message:
        "{params.summary}"
    wildcard_constraints:
        pack=regex_of(PACKS),
    group:
        TRAIN.get("group")
    threads: TRAIN.get("threads", 1)
    resources:
        mem_mb=TRAIN.get("mem_mb", 4000),
        runtime=lambda wildcards: train_runtime(PACKS[wildcards.pack]),
        gpu=1 if TRAIN.get("device") == "cuda" else 0,
    conda:
        "../../environment.yml"
    script:
        "../scripts/train_pack.py"


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
        runtime=lambda wildcards: train_runtime([GRID.cells[wildcards.cell]]),
        gpu=1 if TRAIN.get("device") == "cuda" else 0,
    conda:
        "../../environment.yml"
    # RUN_ARGS (device, data_dir, ...) is part of the command, not of params: changing it
    # changes no numbers and must not make Snakemake retrain (params are a rerun trigger).
    shell:
        f"fpt train {{params.cell}} {RUN_ARGS} out={{params.out}} > {{log}} 2>&1"
