# Every ablation's figure and table, the attention maps of the bit tasks, and the study's compute,
# drawn from the aggregated tables only. One job draws the ablations: redrawing costs one Python
# start-up, so `snakemake --cores 1 figures` takes seconds. Outputs are flagged update(): a job
# that fails restores the previous files instead of deleting them.


rule figures:
    input:
        STUDY.description_file,
        STUDY.figure_files(),


rule draw_figures:
    input:
        table=f"{STUDY.results_dir}/aggregate.parquet",
        curves=f"{STUDY.results_dir}/curves.parquet",
        description=STUDY.description_file,
        attention=[STUDY.attention_table(c) for c in STUDY.attention_cells().values()],
    output:
        images=[
            update(
                report(
                    f"{STUDY.figures_dir}/{name}.png",
                    caption="../report/ablation.rst",
                    category="Ablations",
                    labels={"ablation": name, "figure": settings["kind"]},
                )
            )
            for name, settings in STUDY.ablation_settings().items()
        ],
        tables=[
            update(
                report(
                    f"{STUDY.figures_dir}/{name}.md",
                    caption="../report/table.rst",
                    category="Tables",
                    labels={"ablation": name},
                )
            )
            for name in STUDY.ablation_settings()
        ],
        latex=[update(f"{STUDY.figures_dir}/{name}.tex") for name in STUDY.ablation_settings()],
        attention=[
            update(
                report(
                    f"{STUDY.figures_dir}/attention-{task}.png",
                    caption="../report/attention.rst",
                    category="Attention maps",
                    labels={"task": task},
                )
            )
            for task in STUDY.attention_cells()
        ],
    log:
        f"{STUDY.logs_dir}/figures.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/draw_figures.py"


rule draw_compute:
    input:
        table=f"{STUDY.results_dir}/aggregate.parquet",
        curves=f"{STUDY.results_dir}/curves.parquet",
        description=STUDY.description_file,
    output:
        png=update(
            report(
                f"{STUDY.figures_dir}/compute.png",
                caption="../report/compute.rst",
                category="Compute",
            )
        ),
        md=update(
            report(
                f"{STUDY.figures_dir}/compute.md",
                caption="../report/compute.rst",
                category="Compute",
            )
        ),
        tex=update(f"{STUDY.figures_dir}/compute.tex"),
        stopping=update(
            report(
                f"{STUDY.figures_dir}/stopping.md",
                caption="../report/stopping.rst",
                category="Compute",
            )
        ),
    log:
        f"{STUDY.logs_dir}/compute.log",
    conda:
        "../../environment.yml"
    params:
        study=STUDY.name,
    script:
        "../scripts/draw_compute.py"


rule attention_maps:
    """What a trained cell's frozen blocks attend to on held-out examples. Addressed by the
    cell, so every study that draws the same cell's maps shares them."""
    input:
        unpack(lambda wildcards: STUDY.attention_inputs(wildcards.cell_dir, wildcards.examples)),
    output:
        "{cell_dir}/attention-{examples}.parquet",
    log:
        STUDY.attention_log(),
    wildcard_constraints:
        cell_dir=regex_of([STUDY.cell_dir(c) for c in STUDY.attention_cells().values()]),
        examples=r"\d+",
    conda:
        "../../environment.yml"
    params:
        examples=lambda wildcards: int(wildcards.examples),
    script:
        "../scripts/attention_maps.py"
