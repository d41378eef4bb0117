# Training. A cell's results are content-addressed: results/cells/<cell id>/, the id a hash of
# the resolved cell, so a cell that several ablations (or studies) share trains once.
#
# The study's unfinished cells come in packs (`train: pack_cells`, `pack_minutes`; one cell
# each by default): one job and one process trains a pack's cells one after another, so Python,
# torch and the backbone load once per pack, and on Slurm a pack holds one GPU. A job's outputs
# are its cells' own files, and a finished cell is in no pack: it never trains again, and a pack
# stopped half-way is, next time, a smaller pack of what is left. Each cell logs to
# logs/train/<cell id>.log as it runs.

for pack_name, pack_cells in STUDY.packs.items():

    rule:
        name:
            f"train_{pack_name}"
        input:
            sorted({ancient(f) for cell in pack_cells for f in STUDY.setup_inputs(cell)}),
        output:
            [f for cell in pack_cells for f in STUDY.outputs(cell.id)],
        log:
            f"logs/train/pack-{pack_name}.log",
        # pretraining first: the cells that load its export wait for it
        priority: 10 if pack_cells[0].id in STUDY.pretrain_ids else 0
        group:
            STUDY.resources.group
        conda:
            "../../environment.yml"
        threads: STUDY.resources.threads
        resources:
            mem_mb=STUDY.mem_mb(pack_cells),
            runtime=STUDY.runtime(pack_cells),
            gpu=STUDY.gpus(),
        params:
            jobs=STUDY.jobs(pack_name),
            run=STUDY.run.to_dict(),
        message:
            STUDY.pack_message(pack_name)
        script:
            "../scripts/train_pack.py"
