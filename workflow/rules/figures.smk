# Every ablation's figure and table, and the attention maps of the bit tasks, drawn from the
# aggregated tables only. One job draws them all: redrawing costs one Python start-up instead of
# one per figure, so `snakemake --cores 1 figures` takes seconds.


rule figures:
    input:
        figure_targets(),
        cka_targets(),


rule draw_figures:
    input:
        table=f"{RESULTS}/aggregate.parquet",
        curves=f"{RESULTS}/curves.parquet",
        attention=expand(f"{RESULTS}/attention/{{task}}.parquet", task=attention_tasks()),
    output:
        images=[
            report(
                f"{FIGURES_DIR}/{name}.png",
                caption="../report/ablation.rst",
                category="Ablations",
                labels={"ablation": name, "figure": ablation_setting(name, "figure", "bars")},
            )
            for name in GRID.ablations
        ],
        tables=[
            report(
                f"{FIGURES_DIR}/{name}.md",
                caption="../report/table.rst",
                category="Tables",
                labels={"ablation": name},
            )
            for name in GRID.ablations
        ],
        attention=[
            report(
                f"{FIGURES_DIR}/attention-{task}.png",
                caption="../report/attention.rst",
                category="Attention maps",
                labels={"task": task},
            )
            for task in attention_tasks()
        ],
    params:
        ablations={
            name: {
                "kind": ablation_setting(name, "figure", "bars"),
                "title": ablation_setting(name, "title", name),
                "thresholds": ablation_setting(name, "thresholds", {}),
                "paper_notes": ablation_setting(name, "paper_notes", {}),
            }
            for name in GRID.ablations
        },
        metric=FIGURES.get("metric", "final_test_acc"),
        reported=reported_path(),
    log:
        f"logs/{STUDY}/figures.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/draw_figures.py"


rule draw_compute:
    input:
        table=f"{RESULTS}/aggregate.parquet",
    output:
        png=report(f"{FIGURES_DIR}/compute.png", caption="../report/compute.rst", category="Compute"),
        md=report(f"{FIGURES_DIR}/compute.md", caption="../report/compute.rst", category="Compute"),
    params:
        title=f"compute of the {STUDY} study",
    log:
        f"logs/{STUDY}/compute.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/draw_compute.py"


rule attention_maps:
    input:
        # ancient: the maps need the cell's model.pt, which is not committed; a fresh clone
        # must not try to recompute them because its summary looks newer.
        done=lambda wildcards: ancient(cell_done(attention_cell(wildcards.task))),
    output:
        f"{RESULTS}/attention/{{task}}.parquet",
    params:
        # Written beside the summary by the cell's train job, which declares only the summary:
        # model.pt is not committed, and a declared output missing on a fresh clone would
        # retrain the cell.
        model=lambda wildcards: f"{cell_dir(attention_cell(wildcards.task))}/model.pt",
        examples=ATTENTION.get("examples", 1),
    log:
        f"logs/{STUDY}/attention/{{task}}.log",
    wildcard_constraints:
        task=regex_of(attention_tasks()),
    conda:
        "../../environment.yml"
    script:
        "../scripts/attention_maps.py"
