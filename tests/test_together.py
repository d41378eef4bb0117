"""Cells stepped together: one batched computation over the frozen backbone they share, each cell
with its own trainable tensors, optimiser, data order and dropout masks, and each with the
results of training it alone.

Tolerance (fp32). Masks, batches and nearly all of the forward pass are the same bit for bit,
but the gradients of a cell's own tensors (layer norms, input and output layers, positions) sum
over its batch and tokens in another order when batched, so they differ in float32's last bits,
and the differences grow slowly: 1e-7 relative after 40 steps, at most 3e-4 on weights of size
~2 after 400 steps at lr 3e-2. Stated: losses and weights within rtol 1e-4, atol 1e-5 over 24
steps; accuracies within 0.01 (a prediction within rounding of a tie may flip; none did). In
bf16 (and TF32) each product rounds to a few bits: a step together is a step alone to that
rounding, and a trajectory then drifts as on another machine. A group stopped and resumed as
the same group repeats its computation: bit for bit an uninterrupted run.
"""
import io
import multiprocessing
import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch
from _models import register_tiny
from torch.func import vmap

import fpt_core.train as train_mod
from fpt_core import dropout, results, together
from fpt_core.backbones.registry import write_tiny_backbones
from fpt_core.cell import make_cell
from fpt_core.model import build_model
from fpt_core.pack import make_packs, train_pack
from fpt_core.run import Run
from fpt_core.tasks import make_task

torch.set_num_threads(1)

RUN = Run(progress=False, checkpoint_every=10)
STEPS = 24
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}  # fp32
ACCURACY_TOLERANCE = 0.01
VOLATILE = ["wall_time_s", "finished_at", "hostname", "slurm_job_id"]
# companions differ in what each cell owns: seed (data, dropout, input and output layers), lr
COMPANIONS = [{"seed": 0, "lr": 1e-3}, {"seed": 1, "lr": 3e-3}, {"seed": 2, "lr": 1e-2}]


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    """Tiny pretrained stand-ins (a directory each) of GPT-2 and of MiniLM, a BERT encoder."""
    return {name: str(path) for name, path in
            write_tiny_backbones(tmp_path_factory.mktemp("backbones"), ["gpt2", "minilm-l6"],
                                 hidden=16).items()}


def cells(backbone: str, *changes: dict):
    base = {"task": "bit-xor", "backbone": backbone, "init": "pretrained", "steps": STEPS,
            "eval_every": 8, "eval_size": 64, "batch_size": 4, "dropout": 0.1}
    return [make_cell({**base, **c}) for c in changes]


def train(group, root):
    return train_mod.train_cells(group, [root / c.id for c in group], RUN,
                                 [io.StringIO() for _ in group])


def alone(group, root):
    for cell in group:
        train([cell], root)


def weights(out_dir):
    return results.load_checksummed(out_dir / results.MODEL)["model"]


def key_bias_noise(weights: dict) -> dict:
    """The weights without GPT-2's key biases: a key bias adds the same amount to every score of
    a query, which softmax takes away, so its gradient is rounding noise, and Adam, which steps
    by about lr x its sign, walks it differently in any two runs that round differently."""
    out = dict(weights)
    for name, w in weights.items():
        if name.endswith("attn.c_attn.bias"):
            width = w.numel() // 3
            out[name] = torch.cat([w[:width], w[2 * width:]])  # queries and values
    return out


def assert_results_match(got, want, exact=False):
    """A cell's results (curve, summary, weights) as in `want`: within the tolerances, or bit
    for bit."""
    for read in (results.read_curve, results.read_summary):
        a, b = (read(path).drop(columns=VOLATILE, errors="ignore") for path in (got, want))
        if exact:
            pd.testing.assert_frame_equal(a, b, check_exact=True)
            continue
        assert list(a.columns) == list(b.columns) and len(a) == len(b)
        for col in a.columns:
            if a[col].dtype.kind != "f":
                pd.testing.assert_series_equal(a[col], b[col])
            elif "acc" in col:
                np.testing.assert_allclose(a[col], b[col], rtol=0, atol=ACCURACY_TOLERANCE, err_msg=col)
            else:
                np.testing.assert_allclose(a[col], b[col], err_msg=col, **TOLERANCE)
    mine, theirs = weights(got), weights(want)
    if not exact:
        mine, theirs = key_bias_noise(mine), key_bias_noise(theirs)
    assert mine.keys() == theirs.keys()
    for name in mine:
        if exact:
            assert torch.equal(mine[name], theirs[name]), name
        else:
            torch.testing.assert_close(mine[name], theirs[name], msg=name, equal_nan=True, **TOLERANCE)


@pytest.fixture
def batched_sizes(monkeypatch):
    """How many cells each batched computation of the run stepped together."""
    sizes = []
    real = together.batched_logits

    def counted(model, tensors, keys, xs):
        sizes.append(len(tensors))
        return real(model, tensors, keys, xs)

    monkeypatch.setattr(together, "batched_logits", counted)
    return sizes


# ---------------------------------------------------------------- counter-based dropout

def mask(seed=0, step=0, site=3, shape=(64, 128), p=0.1):
    key = dropout.step_key(torch.tensor([seed, step]))
    return dropout.keep_mask(key, site, torch.Size(shape), p, torch.device("cpu"))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_counter_dropout_drops_the_expected_fraction_and_scales_the_rest(p):
    kept = mask(p=p, shape=(256, 1024)).double().mean().item()
    assert kept == pytest.approx(1 - p, abs=0.004)  # 262144 draws: 4 standard errors or more
    for x in (torch.ones(64, 128), torch.randn(64, 128).bfloat16()):
        with dropout.keyed(torch.tensor([0, 0])):
            y = dropout.counter_dropout(x, p, site=3)
        assert torch.equal(y != 0, mask(p=p))
        # kept values scaled in float32, then rounded (a bf16 scale for p 0.1 would be 1.109)
        assert torch.equal(y[y != 0], (x[y != 0].float() * (1 / (1 - p))).to(x.dtype))


def test_counter_dropout_masks_differ_across_seeds_steps_and_sites_and_repeat_exactly():
    base = mask()
    assert torch.equal(base, mask())  # a pure function: no generator, no state
    for other in (mask(seed=1), mask(step=1), mask(site=4)):
        agree = (other == base).double().mean().item()
        assert agree == pytest.approx(0.1**2 + 0.9**2, abs=0.01)  # as independent masks agree
    rows = mask(shape=(512, 64))
    assert not any(torch.equal(rows[0], rows[i]) for i in range(1, 512))  # no repeating pattern
    assert mask(seed=2**40, step=10**9).double().mean().item() == pytest.approx(0.9, abs=0.01)


def test_counter_dropout_is_the_same_called_alone_and_batched_under_vmap():
    keys = torch.tensor([[0, 5], [7, 5], [0, 6]])
    x = torch.randn(3, 4, 10, 32)

    def one(k, xi):
        with dropout.keyed(k):
            return dropout.counter_dropout(xi, 0.3, site=11)

    batched = vmap(one, randomness="error")(keys, x)
    for i in range(3):
        assert torch.equal(batched[i], one(keys[i], x[i]))


def test_the_model_drops_out_by_its_key_and_draws_nothing(backbones):
    (cell,) = cells(backbones["gpt2"], {"seed": 3})
    model = build_model(cell, make_task(cell).spec).train()
    assert {type(m) for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {dropout.CounterDropout}
    assert model.backbone.model.config._attn_implementation == dropout.COUNTER_ATTENTION
    x = torch.randn(4, 10, 1)
    torch.manual_seed(0)
    rng = torch.random.get_rng_state()
    model.set_dropout_step(3, 7)
    first = model(x)
    assert torch.equal(model(x), first)  # the masks are the key's, not a generator's
    assert torch.equal(torch.random.get_rng_state(), rng)
    model.set_dropout_step(3, 8)
    assert not torch.equal(model(x), first)
    with torch.no_grad():
        assert not torch.equal(model.eval()(x), first)


@pytest.mark.parametrize("backbone", ["gpt2-tiny", "tiny-bert", "tiny-llama", "tiny-vit"])
def test_attention_probabilities_drop_out_by_the_key_in_every_transformer(monkeypatch, backbone):
    register_tiny(monkeypatch)
    dropped = []
    real = dropout.counter_dropout

    def spied(x, p, site):
        dropped.append((tuple(x.shape), p))
        return real(x, p, site)

    monkeypatch.setattr(dropout, "counter_dropout", spied)
    cell = make_cell({"task": "bit-xor", "backbone": backbone, "init": "random", "dropout": 0.3})
    model = build_model(cell, make_task(cell).spec).train()
    x = torch.randn(2, 10, 1)
    with torch.no_grad():
        first = model(x)
        heads = model.backbone.model.config.num_attention_heads
        assert ((2, heads, 10, 10), 0.3) in dropped  # the attention probabilities
        assert torch.equal(model(x), first)
        model.set_dropout_step(0, 1)
        assert not torch.allclose(model(x), first)
        dropped.clear()
        model.eval()(x)
        assert dropped == []


def test_the_lstm_drops_out_each_time_step_by_a_mask_of_its_own(monkeypatch):
    register_tiny(monkeypatch)
    cell = make_cell({"task": "bit-xor", "backbone": "tiny-lstm", "init": "random", "dropout": 0.5})
    model = build_model(cell, make_task(cell).spec).train()
    with dropout.keyed(model.dropout_key):
        keep = model.backbone.layers[0].drop.keep((10, 2, 16), torch.device("cpu"))
    assert not any(torch.equal(keep[0], keep[t]) for t in range(1, 10))
    x = torch.randn(2, 10, 1)
    with torch.no_grad():
        first = model(x)
        assert torch.equal(model(x), first)
        model.set_dropout_step(0, 1)
        assert not torch.allclose(model(x), first)


# ---------------------------------------------------------------- stepped together = alone

@pytest.mark.parametrize("name", ["gpt2", "minilm-l6"])
def test_cells_stepped_together_get_the_results_of_training_each_alone(
        backbones, tmp_path, batched_sizes, name):
    group = cells(backbones[name], *COMPANIONS)
    assert len({together.together_key(c) for c in group}) == 1
    outcomes = train(group, tmp_path / "together")
    assert all(o.iloc[0]["status"] == "finished" for o in outcomes)
    assert batched_sizes == [3] * STEPS
    alone(group, tmp_path / "alone")
    for cell in group:
        assert_results_match(tmp_path / "together" / cell.id, tmp_path / "alone" / cell.id)
    firsts = [weights(tmp_path / "together" / c.id)["output_layer.weight"] for c in group]
    assert not torch.allclose(firsts[0], firsts[1])  # each trained its own


def test_in_bf16_a_step_together_computes_a_step_alone_to_bf16_rounding(backbones, tmp_path):
    """bf16 products round to 8 bits, and the batched products add in other orders: the same
    step to bf16 rounding. Adam's first step moves every weight by +-lr whatever its gradient's
    size, so a gradient near 0 whose sign the rounding flips moves it by 2 lr: a trajectory
    then parts as it would on another machine, not within a float tolerance."""
    group = cells(backbones["gpt2"], *({**c, "precision": "bf16", "steps": 1, "eval_every": 1}
                                       for c in COMPANIONS))
    train(group, tmp_path / "together")
    alone(group, tmp_path / "alone")
    for cell in group:
        got, want = (results.read_curve(tmp_path / where / cell.id) for where in ("together", "alone"))
        np.testing.assert_allclose(got["train_loss"], want["train_loss"], rtol=1e-2)


def test_a_diverging_cell_ends_alone_and_leaves_its_companions_their_results(backbones, tmp_path):
    group = cells(backbones["gpt2"], *COMPANIONS[:2], {"seed": 5, "lr": 1e30})
    outcomes = train(group, tmp_path / "together")
    rows = [o.iloc[0] for o in outcomes]
    assert [r["status"] for r in rows] == ["finished", "finished", "diverged"]
    assert rows[2]["steps_done"] < STEPS
    alone(group, tmp_path / "alone")
    for cell in group:
        assert_results_match(tmp_path / "together" / cell.id, tmp_path / "alone" / cell.id)


def test_a_failing_cell_leaves_its_companions_training(backbones, tmp_path, monkeypatch):
    group = cells(backbones["gpt2"], *COMPANIONS)
    real = train_mod.make_task

    def broken_for_seed_1(cell, **kw):
        if cell.seed == 1:
            raise OSError("the data of seed 1 is unreadable")
        return real(cell, **kw)

    monkeypatch.setattr(train_mod, "make_task", broken_for_seed_1)
    outcomes = train(group, tmp_path / "together")
    assert isinstance(outcomes[1], OSError)
    assert "failed" in (tmp_path / "together" / group[1].id / results.PROGRESS).read_text()
    monkeypatch.setattr(train_mod, "make_task", real)
    alone([group[0], group[2]], tmp_path / "alone")
    for cell in (group[0], group[2]):
        assert_results_match(tmp_path / "together" / cell.id, tmp_path / "alone" / cell.id)


def stop_at(monkeypatch, seed: int, step: int) -> None:
    """A stop signal (Slurm's SIGTERM) to this process as cell `seed` draws batch `step`."""
    real = train_mod.make_task

    def make_task(cell, **kw):
        task = real(cell, **kw)
        batch = task.train_batch

        def signalled(s, size):
            if cell.seed == seed and s == step:
                os.kill(os.getpid(), signal.SIGTERM)
            return batch(s, size)

        task.train_batch = signalled
        return task

    monkeypatch.setattr(train_mod, "make_task", make_task)


def test_a_stopped_group_checkpoints_every_cell_and_resumes_to_the_same_numbers(
        backbones, tmp_path, monkeypatch):
    group = cells(backbones["gpt2"], *COMPANIONS)
    train(group, tmp_path / "whole")
    stop_at(monkeypatch, seed=1, step=13)
    with pytest.raises(train_mod.Preempted, match="checkpoints written"):
        train(group, tmp_path / "stopped")
    for cell in group:
        state = results.load_checkpoint(tmp_path / "stopped" / cell.id, cell.id)
        assert state["step"] == 14 and "interrupted" in (
            tmp_path / "stopped" / cell.id / results.PROGRESS).read_text()
    monkeypatch.undo()
    train(group, tmp_path / "stopped")
    for cell in group:
        assert_results_match(tmp_path / "stopped" / cell.id, tmp_path / "whole" / cell.id, exact=True)


def test_companions_at_different_steps_and_a_changed_group_each_get_their_solo_results(
        backbones, tmp_path, monkeypatch):
    group = cells(backbones["minilm-l6"], *COMPANIONS)
    alone(group, tmp_path / "alone")
    # cell 0 trained alone stops at step 7; then cells 0 and 1 step together, 0 from step 7
    stop_at(monkeypatch, seed=0, step=6)
    with pytest.raises(train_mod.Preempted, match="checkpoint written at step 7"):
        train([group[0]], tmp_path / "mixed")
    monkeypatch.undo()
    stop_at(monkeypatch, seed=1, step=15)  # and that pair stops part-way too
    with pytest.raises(train_mod.Preempted):
        train(group[:2], tmp_path / "mixed")
    monkeypatch.undo()
    steps = [results.load_checkpoint(tmp_path / "mixed" / c.id, c.id)["step"] for c in group[:2]]
    assert steps == [16 + 7, 16]
    # a group of another make-up finishes them: 1 at step 16, 2 from the start (0 has ended)
    train(group, tmp_path / "mixed")
    for cell in group:
        assert_results_match(tmp_path / "mixed" / cell.id, tmp_path / "alone" / cell.id)


def killed_at(group, root, step: int) -> int:
    """Train the group in a child process that SIGKILLs itself as it draws batch `step`."""
    def child():
        real = train_mod.make_task

        def make_task(cell, **kw):
            task = real(cell, **kw)
            batch = task.train_batch
            task.train_batch = lambda s, size: (os.kill(os.getpid(), signal.SIGKILL)
                                                if s == step else batch(s, size))
            return task

        train_mod.make_task = make_task
        train(group, root)

    proc = multiprocessing.get_context("fork").Process(target=child)
    proc.start()
    proc.join(120)
    return proc.exitcode


def test_a_killed_group_resumes_to_the_numbers_of_one_never_killed(backbones, tmp_path):
    group = cells(backbones["gpt2"], *COMPANIONS)
    train(group, tmp_path / "whole")
    assert killed_at(group, tmp_path / "killed", step=17) == -signal.SIGKILL
    assert all(results.load_checkpoint(tmp_path / "killed" / c.id, c.id)["step"] == 10
               for c in group)
    train(group, tmp_path / "killed")
    for cell in group:
        assert_results_match(tmp_path / "killed" / cell.id, tmp_path / "whole" / cell.id, exact=True)
        assert not (tmp_path / "killed" / cell.id / results.CHECKPOINT).exists()


# ---------------------------------------------------------------- groups and packs

def test_only_cells_of_one_together_key_step_together(backbones, tmp_path):
    a, b = cells(backbones["gpt2"], {"seed": 0}, {"seed": 1, "batch_size": 8})
    assert together.together_key(a) != together.together_key(b)
    with pytest.raises(ValueError, match="together key"):
        train([a, b], tmp_path)
    (cached,) = cells(backbones["gpt2"], {"trainable": "output", "dropout": 0.0})
    assert together.together_key(cached) is None  # trains on cached features, alone


@pytest.mark.parametrize("change", [{"init": "random"}, {"init": "statistics"},
                                    {"trainable": "all"}], ids=["random", "statistics", "all"])
def test_seeds_that_draw_or_train_their_own_blocks_step_together_too(
        backbones, tmp_path, batched_sizes, change):
    """Where each cell's blocks are its own (drawn from its seed, or trained), they are stacked
    with its other tensors: one batched computation still, each cell's results those of
    training it alone."""
    group = cells(backbones["gpt2"], *({**c, **change} for c in COMPANIONS[:2]))
    assert together.together_key(group[0]) == together.together_key(group[1]) is not None
    train(group, tmp_path / "together")
    assert batched_sizes == [2] * STEPS
    alone(group, tmp_path / "alone")
    for cell in group:
        assert_results_match(tmp_path / "together" / cell.id, tmp_path / "alone" / cell.id)


def test_packs_keep_companions_together_and_a_pack_steps_them_together(
        backbones, tmp_path, batched_sizes, capsys):
    group = cells(backbones["gpt2"], *COMPANIONS, {"seed": 3})
    other = cells(backbones["gpt2"], {"seed": 0, "batch_size": 8})
    packs = make_packs(group + other, size=3, together=3)
    assert sorted(len(p) for p in packs.values()) == [2, 3]
    assert any({c.id for c in p} == {c.id for c in group[:3]} for p in packs.values())
    jobs = [{"values": c.to_dict(), "out": str(tmp_path / "packed" / c.id),
             "log": str(tmp_path / "logs" / f"{c.id}.log"), "name": f"seed {c.seed}", "together": 3}
            for c in group]
    assert train_pack(jobs, {"progress": False, "checkpoint_every": 10}) == []
    assert batched_sizes == [3] * STEPS
    out = capsys.readouterr().out
    assert out.count("stepped together with 2 more") == 3 and "[4/4]" in out
    for cell in group:
        assert "step 24/24" in (tmp_path / "logs" / f"{cell.id}.log").read_text()
    alone(group, tmp_path / "alone")
    for cell in group:
        assert_results_match(tmp_path / "packed" / cell.id, tmp_path / "alone" / cell.id)
