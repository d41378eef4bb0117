"""The shared-backbone measure: cells stepped together by the library's own step (one batched
computation over frozen weights held once, a torch.optim.Adam per cell) against the same cells
stepped one after another."""
import pytest
import torch

from fpt_bench import bench, ensemble, workload
from fpt_core import together
from fpt_core.train import step_together

SETTINGS = bench.settings_from(bench.parse_args(["--tiny", "--device", "cpu", "--repeats", "1"]))


def members_and_alone(tmp_path, lrs, precision="fp32"):
    spec = workload.make_spec("bit-xor")
    cells = [workload.bench_cell(SETTINGS, "bit-xor", batch_size=4, lr=lr, precision=precision)
             for lr in lrs]
    pool = workload.TensorPool(spec, 4, pool=8)
    tasks = [ensemble.Offset(pool, k) for k in range(len(cells))]
    shared, members = ensemble.together_members(cells, spec, tasks, SETTINGS.device, tmp_path)
    alone = [workload.build(c, spec, SETTINGS.device) for c in cells]
    return cells, tasks, shared, members, alone


def test_each_cell_holds_its_trainable_tensors_and_the_frozen_weights_are_held_once(tmp_path):
    _, _, shared, members, _ = members_and_alone(tmp_path, [1e-3, 2e-3])
    trainable = {n for n, p in shared.named_parameters() if p.requires_grad}
    frozen = {n: p for n, p in shared.named_parameters() if not p.requires_grad}
    assert trainable and frozen
    for m in members:
        assert set(m.tensors()) == trainable  # nothing frozen is copied per cell
        assert all(t.data_ptr() != dict(shared.named_parameters())[n].data_ptr()
                   for n, t in m.params.items())
        assert [p for g in m.optimizer.param_groups for p in g["params"]] == list(m.params.values())
    assert {g["lr"] for m in members for g in m.optimizer.param_groups} == {1e-3, 2e-3}


def test_stepped_together_each_cell_ends_where_the_trainers_step_alone_takes_it(tmp_path):
    lrs = [1e-3, 3e-3, 1e-2]
    cells, tasks, shared, members, alone = members_and_alone(tmp_path, lrs)
    for step in range(5):
        together_losses = [loss.item() for loss, _, _ in
                           step_together(members, shared, SETTINGS.device)]
        for m in members:
            m.state["step"] += 1
        alone_losses = [workload.trainer_step(model, opt, params, task, cell, SETTINGS.device, step)
                        for (model, params, opt), cell, task in zip(alone, cells, tasks)]
        assert together_losses == pytest.approx(alone_losses, rel=1e-5)
    for m, (model, _, _) in zip(members, alone):
        for name, p in model.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(m.params[name], p, rtol=1e-4, atol=1e-5, msg=name)
    moved = members[0].params["output_layer.weight"]
    assert not torch.allclose(moved, members[2].params["output_layer.weight"])


def test_the_measure_steps_every_cell_in_one_batched_computation(monkeypatch):
    sizes = []
    real = together.batched_logits

    def counted(model, tensors, keys, xs):
        sizes.append(len(tensors))
        return real(model, tensors, keys, xs)

    monkeypatch.setattr(together, "batched_logits", counted)
    (ln,) = ensemble.measure_shared(SETTINGS, "bit-xor")
    assert sizes and set(sizes) == {SETTINGS.n_cells}
    assert ln["measure"] == "shared_backbone" and ln["batch"] == 4 and ln["cells"] == SETTINGS.n_cells
    assert ln["ours"] > 0 and ln["baseline"] > 0
    assert ln["ratio"] == pytest.approx(ln["ours"] / ln["baseline"], rel=1e-3)
