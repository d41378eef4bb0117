# The pipeline's own pretrained backbones (config `pretrain:`), e.g. a transformer trained on
# bit-memory with every group trainable, for the pretraining-modality ablation. The config names
# it backbones/<name>; cells load backbones/<name>-<pretraining cell id>, and wait for it.


use rule train as pretrain with:
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
    group:
        None
    # first: cells wait for them, and the pretraining is the longest chain of jobs
    priority: 10


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
