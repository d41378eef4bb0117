import pandas as pd
import pytest
import torch
from _models import dropout_free_gpt2

from fpt_core import flops, results
from fpt_core.cell import make_cell
from fpt_core.features import CachedFeatures, can_cache, output_logits
from fpt_core.model import build_model
from fpt_core.run import Run
from fpt_core.tasks import make_task
from fpt_core.train import train_cell

CELL = {"task": "digits", "backbone": "gpt2-tiny", "init": "random", "trainable": "output",
        "steps": 60, "eval_every": 30, "lr": 1e-2, "batch_size": 16}


def test_cached_features_give_the_models_own_logits():
    cell = make_cell({**CELL, "val_size": 100})
    task = make_task(cell)
    model = build_model(cell, task.spec).eval()
    cache = CachedFeatures(model, task, cell, torch.device("cpu"), task.eval_batch_size(cell.batch_size))
    x, y = next(task.eval_batches(1000))
    test_x, test_y = cache.test
    assert test_x.shape == (len(y), 1, 64)
    assert torch.equal(test_y, y)
    with torch.no_grad():
        assert torch.allclose(output_logits(model, test_x), model(x), atol=1e-5)
        val_x, val_y = next(task.val_batches(1000))
        assert torch.allclose(output_logits(model, cache.val[0]), model(val_x), atol=1e-5)
    assert torch.equal(cache.val[1], val_y) and len(val_y) == 100
    assert set(cache.eval_sets()) == {"test", "train_sample", "val"}
    raw_x, raw_y = task.training_split()
    assert len(cache.train_x) == len(raw_y) and torch.equal(cache.train_y, raw_y)
    assert model.training is False


def test_output_only_on_cached_features_matches_the_live_path(tmp_path):
    # Without any dropout the backbone is a fixed function, so caching must not change a number.
    cell = make_cell({**CELL, "backbone": dropout_free_gpt2(tmp_path), "init": "pretrained",
                      "dropout": 0.0})
    live = train_cell(cell, tmp_path / "live", Run(feature_cache=False))
    cached = train_cell(cell, tmp_path / "cached", Run())
    curves = [results.read_curve(tmp_path / d).drop(columns=["cell_id", "wall_time_s"])
              for d in ("live", "cached")]
    pd.testing.assert_frame_equal(curves[1], curves[0], check_exact=False, rtol=1e-4, atol=1e-6)
    assert live.iloc[0]["cell_id"] == cached.iloc[0]["cell_id"]  # a run setting, not the cell
    assert cached.iloc[0]["final_test_acc"] == pytest.approx(curves[0]["test_acc"].iloc[-1])
    weights = [results.load_checksummed(tmp_path / d / results.MODEL)["model"] for d in ("live", "cached")]
    assert weights[0].keys() == weights[1].keys() == {"output_layer.weight", "output_layer.bias"}
    for name in weights[0]:
        assert torch.allclose(weights[0][name], weights[1][name], atol=1e-5)


@pytest.mark.parametrize("values, cached", [
    ({"dropout": 0.0}, True),
    ({"dropout": 0.1}, False),  # the paper trains these live, in train mode
    ({"dropout": 0.0, "trainable": "output,layernorm"}, False),
    ({"dropout": 0.0, "task": "bit-xor"}, False),  # fresh examples every step
    ({"dropout": 0.0, "task": "bit-xor", "n_train": 200}, True),  # a fixed pool
    ({"dropout": 0.0, "task": "cifar10"}, False),  # augmented
    ({"dropout": 0.0, "task": "remote-homology"}, True),
    ({"dropout": 0.0, "task": "remote-homology", "padding": "right"}, False),  # batch-mates matter
])
def test_caching_applies_only_where_features_are_what_training_computes(values, cached):
    cell = make_cell({**CELL, **values})
    task = make_task(cell, load=False)  # the rule needs no data
    assert can_cache(cell, task) is cached
    assert flops.cell_work(cell).cached is cached  # plans decide with the trainer's rule
    if values.get("task", CELL["task"]) in ("digits", "bit-xor"):
        assert can_cache(cell, make_task(cell)) is cached  # loading changes nothing
