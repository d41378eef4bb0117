# The pipeline's own pretrained backbones (config `pretrain:`), e.g. a transformer trained on
# bit-memory with every group trainable, for the pretraining-modality ablation. The config names
# it backbones/<name>; cells load backbones/<name>-<pretraining cell id>, and wait for it.


use rule train as pretrain with:
    input:
        unpack(pretrain_inputs),
    output:
        summary=f"{PRETRAIN_DIR}/{{pretrain}}/summary.parquet",
        curve=f"{PRETRAIN_DIR}/{{pretrain}}/curve.parquet",
        model=f"{PRETRAIN_DIR}/{{pretrain}}/model.pt",
    params:
        cell=lambda wildcards: fpt_grid.cell_args(GRID.pretrain_by_id(wildcards.pretrain)[1]),
        out=lambda wildcards, output: os.path.dirname(output.summary),
    log:
        "logs/pretrain/{pretrain}.log",
    benchmark:
        f"{PRETRAIN_DIR}/{{pretrain}}/benchmark.tsv"
    wildcard_constraints:
        pretrain=regex_of(pretrain_ids()),
    group:
        None
    resources:
        mem_mb=TRAIN.get("mem_mb", 4000),
        runtime=lambda wildcards: train_runtime([GRID.pretrain_by_id(wildcards.pretrain)[1]]),
        gpu=1 if TRAIN.get("device") == "cuda" else 0,
    # first: cells wait for them, and the pretraining is the longest chain of jobs
    priority: 10


rule export_backbone:
    input:
        model=f"{PRETRAIN_DIR}/{{pretrain}}/model.pt",
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
