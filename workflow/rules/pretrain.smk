# The pipeline's own pretrained backbones (config `pretrain:`), e.g. a transformer trained on
# bit-memory with every group trainable, for the pretraining-modality ablation. The config names
# it backbones/<name>; cells load backbones/<name>-<pretraining cell id>, and wait for it.


rule pretrain:
    input:
        unpack(pretrain_inputs),
    output:
        summary="results/pretrain/{pretrain}/summary.parquet",
        curve="results/pretrain/{pretrain}/curve.parquet",
        model="results/pretrain/{pretrain}/model.pt",
    params:
        cell=lambda wildcards: fpt_grid.cell_args(GRID.pretrain_by_id(wildcards.pretrain)[1]),
        out=lambda wildcards, output: os.path.dirname(output.summary),
    log:
        "logs/pretrain/{pretrain}.log",
    benchmark:
        "results/pretrain/{pretrain}/benchmark.tsv"
    wildcard_constraints:
        pretrain=regex_of(pretrain_ids()),
    threads: TRAIN.get("threads", 1)
    resources:
        mem_mb=TRAIN.get("mem_mb", 4000),
        runtime=TRAIN.get("runtime", 60),
        gpu=1 if TRAIN.get("device") == "cuda" else 0,
    # first: cells wait for them, and the pretraining is the longest chain of jobs
    priority: 10
    conda:
        "../../environment.yml"
    # RUN_ARGS (device, data_dir, ...) is part of the command, not of params: changing it
    # changes no numbers and must not make Snakemake retrain (params are a rerun trigger).
    shell:
        f"fpt train {{params.cell}} {RUN_ARGS} out={{params.out}} > {{log}} 2>&1"


rule export_backbone:
    input:
        model="results/pretrain/{pretrain}/model.pt",
    output:
        directory("backbones/{name}-{pretrain}"),
    log:
        "logs/pretrain/{name}-{pretrain}.export.log",
    wildcard_constraints:
        name=regex_of(GRID.pretrain),
        pretrain=regex_of(pretrain_ids()),
    # first: cells wait for them, and the pretraining is the longest chain of jobs
    priority: 10
    conda:
        "../../environment.yml"
    script:
        "../scripts/export_backbone.py"
