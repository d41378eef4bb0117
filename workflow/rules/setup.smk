# What cells need before they train: backbone weights, data, the pipeline's own pretrained
# backbones; and the trained weights (model.pt) of a finished cell a later stage reads, where a
# clone has only its committed results.


rule prepare_backbone:
    """A registry backbone's weights, fetched or converted once (SmolLM2's GGUF to safetensors,
    a Hugging Face download where the hub is reachable)."""
    output:
        touch("backbones/.prepared/{backbone}.done"),
    log:
        "logs/backbones/{backbone}.log",
    wildcard_constraints:
        backbone=regex_of(STUDY.prepared_backbones()),
    # first: cells wait for them, and the pretraining is the longest chain of jobs
    priority: 10
    conda:
        "../../environment.yml"
    script:
        "../scripts/prepare_backbone.py"


rule smoke_backbone:
    """A smoke study's stand-in for a registry backbone: a tiny random model of its class."""
    output:
        directory("{stand_in}"),
    log:
        f"{STUDY.logs_dir}/backbones/{{stand_in}}.log",
    wildcard_constraints:
        stand_in=regex_of(STUDY.tiny_backbones().values()),
    priority: 10
    conda:
        "../../environment.yml"
    script:
        "../scripts/smoke_backbone.py"


rule prepare_data:
    """A task's data: generated offline (ListOps), fetched where there is internet (MNIST,
    CIFAR-10, TAPE), or in a smoke study a tiny fixture in the real on-disk format."""
    output:
        touch(f"{STUDY.data_dir}/.prepared/{{task}}.done"),
    log:
        f"logs/data/{STUDY.data_dir}/{{task}}.log",
    wildcard_constraints:
        task=regex_of(STUDY.data_tasks()),
    priority: 10
    conda:
        "../../environment.yml"
    params:
        data_dir=lambda wildcards, output: Path(output[0]).parents[1],
        options=lambda wildcards: STUDY.data_tasks()[wildcards.task],
        fixture=STUDY.smoke,
    script:
        "../scripts/prepare_data.py"


rule export_backbone:
    """A pretraining's trained blocks as a backbone directory that cells load (config
    `pretrain:`; cells name it backbones/<name>, and load backbones/<name>-<pretraining id>)."""
    input:
        model=lambda wildcards: STUDY.model(wildcards.pretrain),
    output:
        directory("backbones/{name}-{pretrain}"),
    log:
        "logs/pretrain/{name}-{pretrain}.export.log",
    wildcard_constraints:
        name=regex_of(STUDY.grid.pretrain),
        pretrain=regex_of(STUDY.pretrain_ids),
    priority: 10
    conda:
        "../../environment.yml"
    script:
        "../scripts/export_backbone.py"


rule restore_model:
    """The trained weights of a finished cell whose model.pt is not here (results commit only
    the summary and curve): the cell trains again and must reproduce its committed curve."""
    input:
        unpack(lambda wildcards: STUDY.restore_inputs(wildcards.cell_dir)),
    output:
        "{cell_dir}/model.pt",
    log:
        "logs/restore/{cell_dir}.log",
    wildcard_constraints:
        cell_dir=regex_of([STUDY.cell_dir(c) for c in STUDY.restorable()]),
    conda:
        "../../environment.yml"
    threads: STUDY.resources.threads
    resources:
        mem_mb=STUDY.resources.mem_mb,
        gpu=STUDY.gpus(),
    params:
        job=lambda wildcards: STUDY.restore_job(wildcards.cell_dir),
    script:
        "../scripts/restore_model.py"
