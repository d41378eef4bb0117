# The representation comparison (config `cka:`): linear CKA between the hidden states of each
# block of untrained FPTs whose frozen blocks come from different pretraining (language, vision,
# bit memory, random, statistics), on the same held-out examples of each task, and of one
# trained FPT before and after training. Its functions are in cka_common.smk.


rule cka:
    input:
        unpack(cka_inputs),
    output:
        CKA_TABLE,
    params:
        tasks=cka_jobs(),
        examples=CKA.get("examples", fpt_cka_stage.DEFAULT_EXAMPLES),
        pool=CKA.get("pool", "mean"),
    log:
        f"logs/{STUDY}/cka.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/cka.py"


rule draw_cka:
    input:
        CKA_TABLE,
    output:
        png=report(f"{FIGURES_DIR}/cka.png", caption="../report/cka.rst", category="Representations"),
        md=f"{FIGURES_DIR}/cka.md",
    params:
        title=CKA.get("title", "Representations: linear CKA of the frozen blocks across "
                               "pretraining modalities, and before vs after training"),
    log:
        f"logs/{STUDY}/cka-figure.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/draw_cka.py"
