# Data that must exist before a task's cells train: generated offline (ListOps) or fetched where
# there is internet (MNIST, CIFAR-10, ...). Options come from the config's `data:` block.


rule prepare_data:
    output:
        touch(f"{DATA_DIR}/.prepared/{{task}}.done"),
    params:
        data_dir=lambda wildcards, output: Path(output[0]).parent.parent,
        options=lambda wildcards: DATA_TASKS[wildcards.task],
        # a smoke run writes tiny fixtures in the real formats instead
        fixture=SMOKE,
    log:
        "logs/data/{task}.log",
    wildcard_constraints:
        task=regex_of(DATA_TASKS),
    # first: cells wait for them, and the pretraining is the longest chain of jobs
    priority: 10
    conda:
        "../../environment.yml"
    script:
        "../scripts/prepare_data.py"
