# The representation comparison (config `cka:`): linear CKA between the hidden states of each
# block of untrained FPTs whose frozen blocks come from different pretraining (language, vision,
# bit memory, random, statistics), on the same held-out examples of each task, and of one
# trained FPT before and after training (fpt_core/cka_stage.py). One table per task, named by
# the hash of what it compares, so studies that ask for the same comparison share it.


rule cka:
    input:
        lambda wildcards: STUDY.cka_inputs(wildcards.task),
    output:
        STUDY.cka_table(),
    log:
        STUDY.cka_log(),
    wildcard_constraints:
        task=regex_of(STUDY.cka_models()),
        digest="[0-9a-f]{12}",
    conda:
        "../../environment.yml"
    params:
        job=lambda wildcards: STUDY.cka_job(wildcards.task),
        trained=lambda wildcards: STUDY.cka_trained_model(wildcards.task),
    script:
        "../scripts/cka.py"


rule draw_cka:
    input:
        tables=[STUDY.cka_table(task) for task in STUDY.cka_models()],
        description=STUDY.description_file,
    output:
        png=update(
            report(
                f"{STUDY.figures_dir}/cka.png",
                caption="../report/cka.rst",
                category="Representations",
            )
        ),
        md=update(f"{STUDY.figures_dir}/cka.md"),
    log:
        f"{STUDY.logs_dir}/cka-figure.log",
    conda:
        "../../environment.yml"
    params:
        title=STUDY.cka_title(),
    script:
        "../scripts/draw_cka.py"
