import math
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from fpt_core.cell import make_cell
from fpt_core.cka import (
    block_states,
    cka_figure,
    cka_matrix,
    cka_table,
    draw_cka,
    linear_cka,
    model_blocks,
)
from fpt_core.model import build_model
from fpt_core.tasks import make_spec


def gaussian(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def orthogonal(d, seed):
    return torch.linalg.qr(gaussian(d, d, seed)).Q


def reference_cka(x, y):
    """The HSIC form with an explicit centring matrix, straight from the paper."""
    x, y = np.asarray(x, np.float64).reshape(len(x), -1), np.asarray(y, np.float64).reshape(len(y), -1)
    h = np.eye(len(x)) - 1 / len(x)
    kx, ky = h @ x @ x.T @ h, h @ y @ y.T @ h
    return float((kx * ky).sum() / np.sqrt((kx * kx).sum() * (ky * ky).sum()))


# ---------------------------------------------------------------- the statistic


def test_a_representation_with_itself_scores_one():
    x = gaussian(100, 20, 0)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x + 5.0) == pytest.approx(1.0, abs=1e-12)  # features are centred


@pytest.mark.parametrize("n, d1, d2", [(200, 30, 10), (40, 300, 90), (50, 20, 500)])
def test_matches_the_centred_gram_form_narrow_and_wide(n, d1, d2):
    x, y = gaussian(n, d1, 1), gaussian(n, d2, 2)
    y = y + 0.5 * x[:, :1]  # share some structure so the value is not near zero
    assert linear_cka(x, y) == pytest.approx(reference_cka(x, y), rel=1e-9)


def test_invariant_to_rotation_and_isotropic_scaling_of_either_side():
    x = gaussian(150, 25, 3)
    y = torch.tanh(x @ gaussian(25, 40, 4)) + 0.3 * gaussian(150, 40, 5)
    base = linear_cka(x, y)
    assert 0.1 < base < 0.99
    assert linear_cka(x @ orthogonal(25, 6), y) == pytest.approx(base, rel=1e-9)
    assert linear_cka(x, y @ orthogonal(40, 7)) == pytest.approx(base, rel=1e-9)
    assert linear_cka(7.5 * x, 0.01 * y) == pytest.approx(base, rel=1e-9)
    # but not to an anisotropic scaling: CKA is not CCA
    stretch = torch.ones(25, dtype=torch.float64)
    stretch[:5] = 20.0
    assert abs(linear_cka(x * stretch, y) - base) > 0.01


def test_symmetric():
    x, y = gaussian(80, 12, 8), gaussian(80, 33, 9)
    y[:, 0] += x[:, 0]
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x), rel=1e-12)


def test_independent_gaussians_score_near_zero_for_large_n_and_higher_for_small_n():
    large = linear_cka(gaussian(2000, 50, 10), gaussian(2000, 50, 11))
    small = linear_cka(gaussian(60, 50, 12), gaussian(60, 50, 13))
    assert large < 0.05
    assert small > 0.3 and small > 5 * large


def test_accepts_numpy_and_float32_and_flattens_tokens():
    x = gaussian(30, 4, 14)
    y = gaussian(30, 6, 15)
    tokens = y.reshape(30, 2, 3).float()
    assert linear_cka(x.numpy(), tokens) == pytest.approx(linear_cka(x, y), rel=1e-6)


def test_constant_representation_is_nan_and_sizes_must_match():
    x = gaussian(20, 3, 16)
    assert math.isnan(linear_cka(x, torch.ones(20, 4)))
    with pytest.raises(ValueError, match="20 examples, y has 19"):
        linear_cka(x, x[:19])


# ---------------------------------------------------------------- hidden states of an FPT


def fpt(backbone, init, task="bit-xor", depth=None, seed=0, precision="fp32"):
    cell = make_cell({"task": task, "backbone": backbone, "init": init, "depth": depth,
                      "seed": seed, "precision": precision})
    return build_model(cell, make_spec(cell))


def xor_inputs(model, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n, model.spec.n_tokens, model.spec.input_dim), generator=g).float()


def all_hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.fixture(scope="module")
def tiny():
    return fpt("gpt2-tiny", "random")


@pytest.fixture(scope="module")
def minilm():
    return fpt("minilm-l6", "pretrained")


def test_gpt2_tiny_gives_input_and_every_block_in_each_pooling(tiny):
    x = xor_inputs(tiny)
    t, h, r = tiny.spec.n_tokens, tiny.backbone.hidden, tiny.spec.n_readout
    raw = block_states(tiny, x, pool="none")
    assert len(raw) == tiny.backbone.n_blocks + 1 == 3
    assert all(s.shape == (12, t, h) and s.dtype == torch.float32 for s in raw)
    mean = block_states(tiny, x, pool="mean", batch_size=5)  # batches are stitched in order
    readout = block_states(tiny, x, pool="readout")
    for full, m, rd in zip(raw, mean, readout):
        torch.testing.assert_close(m, full.mean(1))
        torch.testing.assert_close(rd, full[:, -r:].flatten(1))
    assert all(s.shape == (12, r * h) for s in readout)
    with pytest.raises(ValueError, match="pool: unknown value 'max'"):
        block_states(tiny, x, pool="max")


def test_gpt2_states_are_what_the_model_computes(tiny):
    x = xor_inputs(tiny)
    tiny.eval()
    states = block_states(tiny, x, pool="none")
    gpt2 = tiny.backbone.model
    with torch.no_grad():
        entering = tiny.embed(x) + gpt2.wpe.weight[: x.shape[1]]
        logits = tiny.output_layer(gpt2.ln_f(states[-1])[:, -tiny.spec.n_readout:])
        expected = tiny(x)
    torch.testing.assert_close(states[0], entering)
    torch.testing.assert_close(logits.reshape(expected.shape), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(states[1], states[2])


def test_kept_depth_sets_the_number_of_states():
    model = fpt("gpt2-tiny", "random", depth=1)
    assert len(model_blocks(model)) == 1
    assert len(block_states(model, xor_inputs(model))) == 2


def test_minilm_states_end_in_what_the_output_layer_reads(minilm):
    x = xor_inputs(minilm, n=6)
    states = block_states(minilm, x, pool="none")
    assert len(states) == 7 and all(s.shape == (6, minilm.spec.n_tokens, 384) for s in states)
    with torch.no_grad():
        minilm.eval()
        logits = minilm.output_layer(states[-1][:, -minilm.spec.n_readout:])
        expected = minilm(x)
    torch.testing.assert_close(logits.reshape(expected.shape), expected, rtol=1e-5, atol=1e-5)


def test_hooks_are_removed_and_training_mode_restored_even_on_failure(tiny):
    before = all_hooks(tiny)
    tiny.train()
    block_states(tiny, xor_inputs(tiny))
    assert all_hooks(tiny) == before and tiny.training
    too_long = torch.zeros(2, tiny.spec.n_tokens + 1, tiny.spec.input_dim)
    with pytest.raises(ValueError, match="tokens"):
        block_states(tiny, too_long)
    assert all_hooks(tiny) == before and tiny.training


def test_states_are_in_eval_mode_so_repeatable(tiny):
    tiny.train()
    x = xor_inputs(tiny)
    a, b = block_states(tiny, x), block_states(tiny, x)
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_bf16_model_gives_float32_states_close_to_fp32(tiny):
    low = fpt("gpt2-tiny", "random", precision="bf16")
    x = xor_inputs(tiny, n=8)
    ours, ref = block_states(low, x, pool="none"), block_states(tiny, x, pool="none")
    assert all(s.dtype == torch.float32 for s in ours)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=0.05, atol=0.05)


def test_lstm_backbone_gives_its_layers(monkeypatch):
    import fpt_core.backbones.registry as R

    small = R.BackboneSpec("lstm", "lstm", "small lstm", lambda: {"hidden": 16, "n_layer": 3})
    monkeypatch.setitem(R.BACKBONES, "lstm", small)
    model = fpt("lstm", "random")
    states = block_states(model, xor_inputs(model, n=5), pool="none")
    assert len(states) == 4 and all(s.shape == (5, model.spec.n_tokens, 16) for s in states)


# ---------------------------------------------------------------- table and figure


@pytest.fixture(scope="module")
def table(tiny):
    x = xor_inputs(tiny, n=64, seed=1)
    other = fpt("gpt2-tiny", "random", seed=1)
    return cka_table({"seed 0": block_states(tiny, x), "seed 1": block_states(other, x)})


def test_table_covers_every_pair_of_models_and_blocks(table, tiny):
    assert list(table.columns) == ["model_a", "model_b", "block_a", "block_b", "cka"]
    pairs = set(zip(table["model_a"], table["model_b"]))
    assert pairs == {("seed 0", "seed 0"), ("seed 0", "seed 1"), ("seed 1", "seed 1")}
    assert len(table) == 3 * 3 * 3
    assert table["cka"].between(0, 1 + 1e-9).all()
    self_ = cka_matrix(table, "seed 0", "seed 0")
    np.testing.assert_allclose(np.diag(self_), 1.0, atol=1e-9)
    np.testing.assert_allclose(self_, self_.T, atol=1e-12)


def test_table_agrees_with_linear_cka(tiny):
    x = xor_inputs(tiny, n=40, seed=2)
    a = block_states(tiny, x)
    b = [s + 0.1 * torch.randn(s.shape, generator=torch.Generator().manual_seed(i)) for i, s in enumerate(a)]
    table = cka_table({"a": a, "b": b})
    cross = cka_matrix(table, "a", "b")
    for i in range(3):
        for j in range(3):
            assert cross[i, j] == pytest.approx(linear_cka(a[i], b[j]), rel=1e-9)


def test_table_refuses_states_of_different_examples(tiny):
    x = xor_inputs(tiny, n=10)
    s = block_states(tiny, x)
    with pytest.raises(ValueError, match="same examples"):
        cka_table({"a": s, "b": [t[:9] for t in s]})


def test_draw_writes_a_heatmap_and_the_diagonal_as_markdown(table, tmp_path):
    png, md = tmp_path / "fig" / "cka.png", tmp_path / "fig" / "cka.md"
    draw_cka(table, png, md, "CKA of two random gpt2-tiny FPTs on bit-xor")
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    text = md.read_text()
    assert text.startswith("# CKA of two random gpt2-tiny FPTs on bit-xor")
    assert re.search(r"\|\s+block\s+\|\s+seed 0 vs seed 1\s+\|", text)
    assert "seed 0 vs seed 0" not in text
    rows = [line for line in text.splitlines() if line.startswith("|")][2:]
    assert len(rows) == 3
    diagonal = table[(table.model_a == "seed 0") & (table.model_b == "seed 1")
                     & (table.block_a == table.block_b)]["cka"]
    assert [f"{v:.3f}" for v in diagonal] == [r.split("|")[2].strip() for r in rows]


def test_figure_text_stays_inside_the_figure(table):
    long_title = "block by block linear CKA of a frozen pretrained transformer and its random twin " * 2
    fig = cka_figure(table, long_title)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    texts = [t for t in fig.findobj(plt.Text) if t.get_visible() and t.get_text()]
    assert texts
    for t in texts:
        extent = t.get_window_extent(renderer)
        assert extent.x0 >= box.x0 - 1 and extent.x1 <= box.x1 + 1, t.get_text()
        assert extent.y0 >= box.y0 - 1 and extent.y1 <= box.y1 + 1, t.get_text()
    plt.close(fig)


def test_one_model_draws_and_says_so(tmp_path):
    states = {"only": [gaussian(30, 5, i) for i in range(4)]}
    table = cka_table(states)
    draw_cka(table, tmp_path / "a.png", tmp_path / "a.md", "one")
    assert "Only one model" in (tmp_path / "a.md").read_text()
    assert isinstance(table, pd.DataFrame) and len(table) == 16
