"""The FPT: paper parameter counts, shapes, readout, trainable groups, seeding, attention maps."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from types import SimpleNamespace

import pytest
import torch

from fpt_core.cell import FPT_GROUPS, GROUPS, ConfigError
from fpt_core.model import build_model, param_counts

torch.set_num_threads(1)


def make_spec(**overrides):
    values = dict(
        name="cifar10", input_kind="vector", input_dim=48, n_tokens=64, n_classes=10,
        n_readout=1, n_predictions=1, chance=0.1, threshold=0.5,
    )
    return SimpleNamespace(**{**values, **overrides})


def make_cell(**overrides):
    values = dict(
        backbone="gpt2-tiny", init="random", trainable=FPT_GROUPS, depth=None, seed=0,
        dropout=0.1, random_init="scaled",
    )
    return SimpleNamespace(**{**values, **overrides})


BIT_MEMORY = dict(name="bit-memory", input_dim=50, n_tokens=120, n_classes=2, n_readout=20,
                  n_predictions=1000)
LISTOPS = dict(name="listops", input_kind="tokens", input_dim=16, n_tokens=100, n_classes=10)

# Lu et al. 2021 count for CIFAR-10 on GPT-2 small (their section 3, appendix)
PAPER_CIFAR10_GPT2 = {"input": 37_632, "output": 7_690, "layernorm": 38_400, "positions": 49_152}


@pytest.fixture(scope="module")
def gpt2_cifar10():
    # the architecture without weights: counts and requires_grad need nothing more
    return build_model(make_cell(backbone="gpt2", init="pretrained"), make_spec(), device="meta")


def test_paper_counts_cifar10_gpt2(gpt2_cifar10):
    counts = param_counts(gpt2_cifar10)
    for group, n in PAPER_CIFAR10_GPT2.items():
        assert counts[group] == n, group
    assert counts["attention"] == 12 * (768 * 2304 + 2304 + 768 * 768 + 768)
    assert counts["feedforward"] == 12 * (768 * 3072 + 3072 + 3072 * 768 + 768)
    assert counts["trainable"] == sum(PAPER_CIFAR10_GPT2.values()) == 132_874
    assert counts["total"] == sum(counts[g] for g in GROUPS) == 85_150_474


@pytest.mark.parametrize("backbone", ["gpt2-tiny", "minilm-l6"])
def test_meta_build_counts_like_a_real_build(backbone):
    cell, spec = make_cell(backbone=backbone), make_spec(n_tokens=16)
    meta = build_model(cell, spec, device="meta")
    assert next(meta.parameters()).device.type == "meta"
    assert param_counts(meta) == param_counts(build_model(cell, spec))


def test_groups_requires_grad_follow_trainable(gpt2_cifar10):
    model = gpt2_cifar10
    groups = model.named_groups()
    assert set(groups) == set(GROUPS)
    assert [n for n, _ in groups["positions"]] == ["backbone.model.wpe.weight"]
    assert {n for n, _ in groups["input"]} == {"input_layer.0.weight", "input_layer.0.bias"}
    assert len(groups["layernorm"]) == 2 * 25  # ln_1, ln_2 per block and ln_f
    for trainable in [FPT_GROUPS, ("output",), ("attention", "feedforward"), GROUPS, ()]:
        model.set_trainable(trainable)
        for group, params in groups.items():
            assert all(p.requires_grad == (group in trainable) for _, p in params), group
        # the backbone's own token embedding is never used, never trained, never counted
        assert not model.backbone.model.wte.weight.requires_grad
    model.set_trainable(FPT_GROUPS)


def test_cell_trainable_applied_by_build_model():
    model = build_model(make_cell(trainable=("output", "layernorm")), make_spec(n_tokens=16))
    counts = param_counts(model)
    assert counts["trainable"] == counts["output"] + counts["layernorm"]
    assert not model.input_layer[0].weight.requires_grad


def test_vector_input_is_orthogonal_with_paper_gain():
    model = build_model(make_cell(), make_spec(n_tokens=16))
    linear, dropout = model.input_layer
    w = linear.weight  # (hidden 64, input 48): orthonormal columns times the gain
    torch.testing.assert_close(w.T @ w, 1.41**2 * torch.eye(48), atol=1e-5, rtol=0)
    assert torch.count_nonzero(linear.bias) == 0
    assert dropout.p == 0.1


@pytest.mark.parametrize(
    "overrides, x",
    [
        ({}, torch.randn(3, 64, 48)),
        (LISTOPS, torch.randint(0, 16, (3, 100))),
        (BIT_MEMORY, torch.randn(3, 120, 50)),
    ],
    ids=["vector", "tokens", "multi-readout"],
)
def test_output_shapes(overrides, x):
    spec = make_spec(**overrides)
    model = build_model(make_cell(), spec)
    logits = model(x)
    assert logits.shape == (3, spec.n_predictions, spec.n_classes)
    assert model.output_layer.out_features == spec.n_predictions // spec.n_readout * spec.n_classes


def test_readout_token_r_predicts_items_r_times_k_onward():
    # bit-memory: 20 readout tokens, 50 bits each; on a causal backbone, changing only the
    # last token may change only the last 50 predictions
    spec = make_spec(**BIT_MEMORY)
    model = build_model(make_cell(), spec).eval()
    x = torch.randn(2, 120, 50)
    x2 = x.clone()
    x2[:, -1] += 1.0
    with torch.no_grad():
        a, b = model(x), model(x2)
    changed = (a - b).abs().amax(dim=(0, 2)) > 0
    assert changed[-50:].all()
    assert not changed[:-50].any()


def test_tiny_gpt2_forward_backward_on_cpu():
    model = build_model(make_cell(), make_spec(name="bit-xor", input_dim=1, n_tokens=10,
                                               n_classes=2, n_readout=5, n_predictions=5))
    x, y = torch.randn(4, 10, 1), torch.randint(0, 2, (4, 5))
    loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, 2), y.reshape(-1))
    loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_frozen_bitwise_unchanged_and_trainable_changed_after_steps():
    spec = make_spec(n_tokens=16)
    model = build_model(make_cell(), spec)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        x, y = torch.randn(4, 16, 48), torch.randint(0, 10, (4, 1))
        loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, 10), y.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, p in model.named_parameters():
        group = model.group_of(name)
        if group in FPT_GROUPS:
            if name.endswith("wpe.weight"):  # only the 16 rows the task uses move
                assert not torch.equal(p[:16], before[name][:16])
                assert torch.equal(p[16:], before[name][16:])
            else:
                assert not torch.equal(p, before[name]), name
        else:
            assert torch.equal(p, before[name]), name


def test_same_seed_same_weights_other_seed_other_weights():
    spec = make_spec(n_tokens=16)
    a = build_model(make_cell(seed=3), spec).state_dict()
    b = build_model(make_cell(seed=3), spec).state_dict()
    c = build_model(make_cell(seed=4), spec).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["input_layer.0.weight"], c["input_layer.0.weight"])
    assert not torch.equal(a["backbone.model.h.0.attn.c_attn.weight"],
                           c["backbone.model.h.0.attn.c_attn.weight"])


def test_build_model_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_model(make_cell(), make_spec(n_tokens=16))
    assert torch.equal(torch.rand(3), expected)


def test_attention_maps_per_block_causal_and_normalised():
    model = build_model(make_cell(depth=1), make_spec(n_tokens=16)).train()
    maps = model.attention_maps(torch.randn(2, 16, 48))
    assert len(maps) == 1 and maps[0].shape == (2, 2, 16, 16)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 2, 16))
    assert torch.count_nonzero(torch.triu(maps[0], diagonal=1)) == 0  # GPT-2 is causal
    assert model.training
    assert model.backbone.model.config._attn_implementation == "sdpa"


def test_more_tokens_than_backbone_positions_is_a_config_error():
    with pytest.raises(ConfigError, match="128 positions"):
        build_model(make_cell(), make_spec(n_tokens=200))


def test_depth_keeps_first_blocks():
    model = build_model(make_cell(depth=1), make_spec(n_tokens=16))
    assert model.backbone.n_blocks == 1
    assert model.backbone.model.config.num_hidden_layers == 1
    assert model(torch.randn(1, 16, 48)).shape == (1, 1, 10)
    with pytest.raises(ConfigError, match=r"depth: 3 .* allowed: 1\.\.2"):
        build_model(make_cell(depth=3), make_spec(n_tokens=16))


def test_real_cell_and_task_spec():
    from fpt_core import tasks
    from fpt_core.cell import make_cell as real_cell

    cell = real_cell({"task": "bit-xor", "backbone": "gpt2-tiny", "init": "random"})
    spec = tasks.make_spec(cell)
    model = build_model(cell, spec)
    x = torch.zeros(2, spec.n_tokens, spec.input_dim)
    assert model(x).shape == (2, spec.n_predictions, spec.n_classes)
