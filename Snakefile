# The FPT ablation pipeline: config -> grid of cells -> training jobs (packs of cells) -> one
# Parquet table per study -> figures. See workflow/rules/ for the stages and config/config.yaml
# for the grid.
#
#     snakemake --cores 2                   the default grid (config/config.yaml)
#     snakemake --cores 1 figures           every figure from results/ (trains only missing cells)
#     snakemake -n --configfile config/paper.yaml   the paper's whole grid
#
# Each config names its study: its table goes to results/<study>/, its figures to
# figures/<study>/, while cells are shared by every study under results/cells/.


from snakemake.utils import min_version

min_version("8.0")


# A --configfile replaces the default grid instead of being merged into it: Snakemake would
# otherwise merge config/config.yaml's ablations and per-task settings into config/paper.yaml.
if not workflow.overwrite_configfiles:
    # Read strictly first: a YAML slip then gets a one-line error with its line number, where
    # Snakemake's own reading says only "not valid JSON or YAML". (A --configfile is read by
    # Snakemake before this file runs; `fpt plan FILE` names the line for it.)
    from fpt_core.configfile import load_strict
    from fpt_core.errors import ConfigError
    from snakemake.exceptions import WorkflowError

    try:
        load_strict("config/config.yaml")
    except ConfigError as error:
        raise WorkflowError(str(error)) from None

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/setup.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/cka.smk"


report: "workflow/report/workflow.rst"


# Rules that need no accelerator run where Snakemake runs (on a cluster: the login node).
localrules:
    all,
    figures,
    prepare_backbone,
    smoke_backbone,
    prepare_data,
    export_backbone,
    aggregate,
    attention_maps,
    draw_figures,
    draw_compute,
    cka,
    draw_cka,


rule all:
    default_target: True
    input:
        STUDY.description_file,
        f"{STUDY.results_dir}/aggregate.parquet",
        STUDY.figure_files(),
        # every cell's own result, so that a cell whose directory was deleted trains again
        [STUDY.summary(cell_id) for cell_id in STUDY.aggregated_cells()],
