# Backbone weights that need a step before training (e.g. SmolLM2's GGUF converted once to
# safetensors, a Hugging Face download on a machine that has the hub), once per backbone.


rule prepare_backbone:
    output:
        touch("backbones/.prepared/{backbone}.done"),
    log:
        "logs/backbones/{backbone}.log",
    wildcard_constraints:
        backbone=regex_of(prepared_backbones()),
    # first: cells wait for them, and the pretraining is the longest chain of jobs
    priority: 10
    conda:
        "../../environment.yml"
    script:
        "../scripts/prepare_backbone.py"


rule smoke_backbone:
    """A smoke run's stand-in for a registry backbone: a tiny random model of its class."""
    output:
        directory(f"{SMOKE_BACKBONES}/{{backbone}}"),
    log:
        f"logs/{STUDY}/backbones/{{backbone}}.log",
    wildcard_constraints:
        backbone=regex_of(smoke_backbones()),
    priority: 10
    conda:
        "../../environment.yml"
    script:
        "../scripts/smoke_backbone.py"
