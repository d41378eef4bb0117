from types import SimpleNamespace

import pandas as pd
import pytest
import torch

import fpt_core.train as train_mod
from fpt_core import results
from fpt_core.cell import make_cell
from fpt_core.features import build_cache, can_cache, output_logits, train_output_only
from fpt_core.model import build_model
from fpt_core.tasks import make_task
from _models import without_dropout

CELL = {"task": "digits", "backbone": "gpt2-tiny", "init": "random", "trainable": "output",
        "steps": 60, "eval_every": 30, "lr": 1e-2, "batch_size": 16, "progress": False}


def test_cached_features_give_the_models_own_logits():
    cell = make_cell(CELL)
    task = make_task(cell)
    model = build_model(cell, task.spec).eval()
    cache = build_cache(model, task, "fp32", torch.device("cpu"), batch_size=64)
    x, y = next(task.eval_batches(1000))
    assert cache.test_x.shape == (len(y), 1, 64)
    assert torch.equal(cache.test_y, y)
    with torch.no_grad():
        assert torch.allclose(output_logits(model, cache.test_x), model(x), atol=1e-5)
    raw_x, raw_y = task._train
    assert len(cache.train_x) == len(raw_y) and torch.equal(cache.train_y, raw_y)
    assert model.training is False


def test_output_only_on_cached_features_matches_the_trainer(tmp_path, monkeypatch):
    # Without dropout the backbone is a fixed function, so caching must not change a number.
    monkeypatch.setattr(train_mod, "build_model", without_dropout(train_mod.build_model))
    # the trainer's own path, even where it would take the cached one
    monkeypatch.setattr(train_mod, "features", SimpleNamespace(can_cache=lambda cell, task: False),
                        raising=False)
    cell = make_cell(CELL)
    summary = train_mod.train_cell(cell, tmp_path)
    normal = results.read_curve(tmp_path).drop(columns=["cell_id", "wall_time_s"])

    task = make_task(cell)
    model = train_mod.build_model(cell, task.spec)
    state = train_output_only(cell, task, model, "cpu")
    cached = pd.DataFrame(state["curve"]).drop(columns=["wall_time_s"])
    pd.testing.assert_frame_equal(cached, normal, check_exact=False, rtol=1e-4, atol=1e-6)
    assert state["status"] == "finished" and state["step"] == cell.steps
    assert state["best_test_acc"] == normal["test_acc"].max()
    assert summary.iloc[0]["final_test_acc"] == pytest.approx(cached["test_acc"].iloc[-1])
    saved = results.load_checksummed(tmp_path / results.MODEL)["model"]
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(p, saved[name], atol=1e-5)


def test_caching_applies_only_to_output_only_cells_with_a_fixed_split():
    cell = make_cell(CELL)
    assert can_cache(cell, make_task(cell))
    more = make_cell({**CELL, "trainable": "output,layernorm"})
    assert not can_cache(more, make_task(more))
    generated = make_cell({**CELL, "task": "bit-xor"})
    task = make_task(generated)
    assert not can_cache(generated, task)
    with pytest.raises(ValueError, match="n_train"):
        build_cache(build_model(generated, task.spec), task, "fp32", torch.device("cpu"))
    with pytest.raises(ValueError, match="output alone"):
        train_output_only(more, make_task(more), build_model(more, make_task(more).spec), "cpu")
    pooled = make_cell({**CELL, "task": "bit-xor", "n_train": 200})
    assert can_cache(pooled, make_task(pooled))
