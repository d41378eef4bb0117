import pandas as pd
import pytest
import torch

from fpt_core import results
from fpt_core.cell import make_cell
from fpt_core.features import CachedFeatures, can_cache, output_logits
from fpt_core.model import build_model
from fpt_core.tasks import make_task
from fpt_core.train import train_cell
from _models import dropout_free_gpt2

CELL = {"task": "digits", "backbone": "gpt2-tiny", "init": "random", "trainable": "output",
        "steps": 60, "eval_every": 30, "lr": 1e-2, "batch_size": 16, "progress": False}


def test_cached_features_give_the_models_own_logits():
    cell = make_cell(CELL)
    task = make_task(cell)
    model = build_model(cell, task.spec).eval()
    cache = CachedFeatures(model, task, cell, torch.device("cpu"), batch_size=64)
    x, y = next(task.eval_batches(1000))
    test_x, test_y = cache.test
    assert test_x.shape == (len(y), 1, 64)
    assert torch.equal(test_y, y)
    with torch.no_grad():
        assert torch.allclose(output_logits(model, test_x), model(x), atol=1e-5)
    raw_x, raw_y = task.training_split()
    assert len(cache.train_x) == len(raw_y) and torch.equal(cache.train_y, raw_y)
    assert model.training is False


def test_output_only_on_cached_features_matches_the_live_path(tmp_path):
    # Without any dropout the backbone is a fixed function, so caching must not change a number.
    cell = {**CELL, "backbone": dropout_free_gpt2(tmp_path), "init": "pretrained", "dropout": 0.0}
    live = train_cell(make_cell({**cell, "feature_cache": False}), tmp_path / "live")
    cached = train_cell(make_cell(cell), tmp_path / "cached")
    curves = [results.read_curve(tmp_path / d).drop(columns=["cell_id", "wall_time_s"])
              for d in ("live", "cached")]
    pd.testing.assert_frame_equal(curves[1], curves[0], check_exact=False, rtol=1e-4, atol=1e-6)
    assert live.iloc[0]["cell_id"] == cached.iloc[0]["cell_id"]  # a run setting, not the cell
    assert cached.iloc[0]["final_test_acc"] == pytest.approx(curves[0]["test_acc"].iloc[-1])
    weights = [results.load_checksummed(tmp_path / d / results.MODEL)["model"] for d in ("live", "cached")]
    assert weights[0].keys() == weights[1].keys() == {"output_layer.weight", "output_layer.bias"}
    for name in weights[0]:
        assert torch.allclose(weights[0][name], weights[1][name], atol=1e-5)


def test_caching_applies_only_to_output_only_cells_with_a_fixed_split():
    cell = make_cell({**CELL, "dropout": 0.0})
    with_dropout = make_cell({**CELL, "dropout": 0.1})  # the paper trains these live, in train mode
    assert not can_cache(with_dropout, make_task(with_dropout))
    assert can_cache(cell, make_task(cell))
    assert not can_cache(make_cell({**CELL, "dropout": 0.0, "feature_cache": False}), make_task(cell))
    more = make_cell({**CELL, "dropout": 0.0, "trainable": "output,layernorm"})
    assert not can_cache(more, make_task(more))
    generated = make_cell({**CELL, "dropout": 0.0, "task": "bit-xor"})
    assert not can_cache(generated, make_task(generated))
    pooled = make_cell({**CELL, "dropout": 0.0, "task": "bit-xor", "n_train": 200})
    assert can_cache(pooled, make_task(pooled))
