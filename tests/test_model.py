"""The FPT: paper parameter counts, shapes, readout, trainable groups, seeding, attention maps,
dropout everywhere the cell asks, ViT blocks as timm computes them."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from _models import dropout_rates, register_tiny
from torch import nn

from fpt_core.backbones import BACKBONES, build_backbone
from fpt_core.backbones.hf import HFBackbone
from fpt_core.backbones.offline import minilm_dir
from fpt_core.cell import FPT_GROUPS, GROUPS, ConfigError
from fpt_core.dropout import COUNTER_ATTENTION
from fpt_core.features import readout_features
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
    # back to the attention it trains with: torch's fused kernel, counter-based dropout
    assert model.backbone.model.config._attn_implementation == COUNTER_ATTENTION


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


# ---------------------------------------------------------------- dropout: the cell's, everywhere

@pytest.mark.parametrize("backbone",
                         ["gpt2-tiny", "tiny-bert", "tiny-llama", "tiny-vit", "tiny-lstm"])
def test_the_cells_dropout_is_every_dropout_of_the_model(monkeypatch, backbone):
    register_tiny(monkeypatch)
    spec, x = make_spec(n_tokens=16), torch.randn(2, 16, 48)
    model = build_model(make_cell(backbone=backbone, dropout=0.3), spec)
    assert dropout_rates(model) == {0.3}
    with torch.no_grad():
        assert not torch.equal(model.train()(x), model.eval()(x))  # and it acts
    assert dropout_rates(build_model(make_cell(backbone=backbone, dropout=0.0), spec)) == {0.0}


@pytest.mark.parametrize("backbone", ["gpt2-tiny", "tiny-bert", "tiny-llama"])
def test_without_dropout_train_mode_is_eval_mode_and_cached_features_are_the_live_ones(
        monkeypatch, backbone):
    register_tiny(monkeypatch)
    spec, x = make_spec(n_tokens=16, n_readout=4, n_predictions=4), torch.randn(3, 16, 48)
    model = build_model(make_cell(backbone=backbone, dropout=0.0), spec)
    live: list[torch.Tensor] = []
    hook = model.output_layer.register_forward_hook(lambda m, args, out: live.append(args[0]))
    with torch.no_grad():
        trained = model.train()(x)
        assert torch.equal(trained, model.eval()(x))
    hook.remove()
    cached = readout_features(model.train(), x)
    assert torch.equal(cached, live[0]) and cached.shape == (3, 4, model.backbone.hidden)


@pytest.mark.parametrize("name, keys", [
    ("gpt2", {"attn_pdrop", "embd_pdrop", "resid_pdrop"}),
    ("bert-base", {"hidden_dropout_prob", "attention_probs_dropout_prob"}),
    ("minilm-l6", {"hidden_dropout_prob", "attention_probs_dropout_prob"}),
])
def test_a_dropout_of_01_is_the_pretrained_configs_own(name, keys):
    config = BACKBONES[name].config()
    overrides = HFBackbone.config_overrides(config, 0.1)
    assert keys <= overrides.keys()
    assert overrides == {key: getattr(config, key) for key in overrides}  # it changes none


def test_minilm_l6_ships_with_dropout_01():
    packaged = json.loads((minilm_dir() / "config.json").read_text())
    assert packaged["hidden_dropout_prob"] == packaged["attention_probs_dropout_prob"] == 0.1
    assert dropout_rates(build_backbone("minilm-l6", "pretrained", dropout=0.1)) == {0.1}


# ---------------------------------------------------------------- ViT as timm ran it

class TimmBlock(nn.Module):
    """timm's vision_transformer.Block of early 2021 as vit_base_patch16_224 builds it, written
    out: LayerNorm eps 1e-6, one fused qkv matrix, explicit softmax attention, a GELU MLP with
    dropout after the activation and after fc2, and dropout after the attention projection
    (drop_rate). Attention-probability dropout is left out (its masks cannot be matched)."""

    def __init__(self, dim: int, heads: int, hidden: int, drop: float, eps: float = 1e-6):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=eps), nn.LayerNorm(dim, eps=eps)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.proj_drop, self.drop1, self.drop2 = (nn.Dropout(drop) for _ in range(3))

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(B, N, 3, self.heads, C // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (C // self.heads) ** -0.5).softmax(dim=-1)
        x = x + self.proj_drop(self.proj((attn @ v).transpose(1, 2).reshape(B, N, C)))
        return x + self.drop2(self.fc2(self.drop1(F.gelu(self.fc1(self.norm2(x))))))

    @torch.no_grad()
    def copy_from(self, layer: nn.Module) -> "TimmBlock":
        """The weights of a transformers ViTLayer."""
        a = layer.attention
        self.qkv.weight.copy_(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]))
        self.qkv.bias.copy_(torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]))
        for mine, theirs in ((self.proj, a.o_proj), (self.norm1, layer.layernorm_before),
                             (self.norm2, layer.layernorm_after), (self.fc1, layer.mlp.fc1),
                             (self.fc2, layer.mlp.fc2)):
            mine.load_state_dict(theirs.state_dict())
        return self


def test_a_vit_block_computes_timms_block(monkeypatch):
    register_tiny(monkeypatch)
    vit = build_backbone("tiny-vit", "random", seed=1, dropout=0.0).eval()
    block = vit.blocks()[0]
    x = 1e-3 * torch.randn(2, 7, 32)  # variance near 1e-6, where eps 1e-6 and 1e-12 part ways
    with torch.no_grad():
        ours = block(x)
        torch.testing.assert_close(ours, TimmBlock(32, 2, 64, 0.0).copy_from(block)(x),
                                   rtol=1e-5, atol=1e-6)
        hub_eps = TimmBlock(32, 2, 64, 0.0, eps=1e-12).copy_from(block)
        assert not torch.allclose(ours, hub_eps(x), rtol=1e-2, atol=1e-4)
    assert {m.eps for m in vit.modules() if isinstance(m, nn.LayerNorm)} == {1e-6}


def test_a_vit_block_drops_out_where_timms_does(monkeypatch):
    register_tiny(monkeypatch)
    block = build_backbone("tiny-vit", "random", seed=1, dropout=0.3).blocks()[0]
    block.attention.attention_dropout = 0.0  # its fused kernel's masks cannot be reproduced
    reference = TimmBlock(32, 2, 64, 0.3).copy_from(block)
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        torch.manual_seed(5)
        ours = block.train()(x)
        torch.manual_seed(5)
        theirs = reference.train()(x)
        assert not torch.allclose(ours, block.eval()(x))  # dropout was on
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
