# The representation comparison's models, inputs and targets (config `cka:`), computed once when
# the workflow is parsed; its rules are in cka.smk. fpt_core/cka_stage.py says what is built.

from fpt_core import cka_stage as fpt_cka_stage

CKA = config.get("cka") or {}
CKA_TABLE = f"{RESULTS}/cka.parquet"

try:
    CKA_MODELS = {
        task: fpt_cka_stage.cka_models(config, GRID, task, adjust=smoke_cell if SMOKE else None)
        for task in CKA.get("tasks", [])
    }
except ConfigError as error:
    raise WorkflowError(str(error)) from None


def cka_trained(task):
    """The trained cell of the before/after comparison on `task`; with `partial: true`, only
    once it has finished."""
    cell_id = fpt_cka_stage.trained_cell(config, GRID, task)
    if cell_id is None or (PARTIAL and not is_finished(cell_id)):
        return None
    return cell_id


def cka_targets():
    """The figure and table, when the config asks for a comparison."""
    if not CKA_MODELS:
        return []
    return [f"{FIGURES_DIR}/cka.png", f"{FIGURES_DIR}/cka.md"]


def cka_inputs(wildcards):
    # Like a finished cell, a computed table needs nothing: on a fresh clone (no backbones/,
    # no model.pt) its inputs would otherwise pretrain the backbones again. To recompute it,
    # delete it (a changed `cka:` block reruns it through its params).
    if os.path.exists(CKA_TABLE):
        return {}
    needs = {}
    for task, models in CKA_MODELS.items():
        for name, cell in models.items():
            needs.update({f"{task}_{name}_{k}": v for k, v in setup_inputs(cell).items()})
        cell_id = cka_trained(task)
        if cell_id is not None:
            needs[f"{task}_trained"] = ancient(cell_done(cell_id))
    return needs


def cka_jobs():
    """Per task: the models' cell values, and the trained cell's model.pt or None. The model is
    read through params, not input: the train job declares only the summary (see
    attention_maps), and a fresh clone has no model.pt."""
    jobs = {}
    for task, models in CKA_MODELS.items():
        cell_id = cka_trained(task)
        jobs[task] = {
            "models": {name: cell.to_dict() for name, cell in models.items()},
            "trained": f"{cell_dir(cell_id)}/model.pt" if cell_id is not None else None,
        }
    return jobs

