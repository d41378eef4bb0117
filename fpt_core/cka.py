"""Linear CKA (Kornblith et al. 2019): how alike the representations of two sets of blocks are.

CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred features of the same n
examples: 1 for the same representation up to rotation and scale, near d/n for independent
random ones (the biased estimator; use n well above the feature width).

block_states runs an FPT and keeps the state entering its first block (input embeddings plus
the backbone's own positions) and the state after each kept block; cka_table compares every
block of one model with every block of another; draw_cka draws the heatmaps and a table.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from fpt_core.model import autocast  # noqa: E402

# Mean over tokens by default: it exists at every depth on the same footing, whereas the
# readout token of a causal model has seen only itself at the input and (for images) is often
# a blank corner patch. pool="readout" compares exactly what the output layer reads.
POOLS = ("mean", "readout", "none")
TABLE_COLUMNS = ["model_a", "model_b", "block_a", "block_b", "cka"]


# ---------------------------------------------------------------- CKA


def _prepared(x) -> Tensor:
    """Centred float64 features, (n, d) -> (n, min(n, d)) with the same Gram matrix X X^T.

    CKA depends on X only through X X^T, so a wide X (d > n) is replaced by R^T from the QR
    of X^T: the n x n Gram form at the cost of a d x n QR, and products stay at most n wide.
    """
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    x = x.reshape(len(x), -1)
    x = x - x.mean(0, keepdim=True)
    if x.shape[1] > x.shape[0]:
        x = torch.linalg.qr(x.T, mode="r").R.T
    return x


def _unit(x: Tensor) -> Tensor | None:
    """Scaled so that ||X^T X||_F = 1; None for a constant representation (CKA undefined)."""
    norm = torch.linalg.matrix_norm(x.T @ x)
    return x / norm.sqrt() if norm > 0 else None


def _cka_units(x: Tensor | None, y: Tensor | None) -> float:
    if x is None or y is None:
        return float("nan")
    return float((y.T @ x).square().sum())


def linear_cka(x, y) -> float:
    """Linear CKA of features x (n, d1) and y (n, d2) of the same n examples; nan if either is
    constant over the examples. Extra trailing dimensions are flattened into features."""
    if len(x) != len(y):
        raise ValueError(f"linear_cka: x has {len(x)} examples, y has {len(y)}; they must match")
    if len(x) < 2:
        raise ValueError("linear_cka: needs at least 2 examples")
    return _cka_units(_unit(_prepared(x)), _unit(_prepared(y)))


# ---------------------------------------------------------------- hidden states of an FPT


def model_blocks(model: nn.Module) -> list[nn.Module]:
    """The kept blocks of an FPT's backbone, in order."""
    return list(model.backbone.blocks())


def pool_tokens(h: Tensor, pool: str, n_readout: int) -> Tensor:
    """(B, T, H) -> (B, H) for mean, (B, n_readout * H) for readout, unchanged for none."""
    if pool == "mean":
        return h.mean(1)
    if pool == "readout":
        return h[:, -n_readout:].flatten(1)
    if pool == "none":
        return h
    raise ValueError(f"pool: unknown value {pool!r}; allowed: {', '.join(POOLS)}")


def _hidden(output) -> Tensor:
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def block_states(model: nn.Module, x: Tensor, pool: str = "mean",
                 batch_size: int = 256) -> list[Tensor]:
    """States of an FPT on inputs x, in eval mode: entry 0 enters block 1, entry i leaves block i.

    Each entry is pooled per example by `pool` (see POOLS) and returned as float32 on the CPU:
    depth + 1 tensors of n = len(x) rows. The last entry is the last block's output, before any
    final norm of the backbone (GPT-2's ln_f, ViT's layernorm). Hooks are removed and the
    training mode restored afterwards, also when the forward pass fails.
    """
    if pool not in POOLS:
        raise ValueError(f"pool: unknown value {pool!r}; allowed: {', '.join(POOLS)}")
    blocks = model_blocks(model)
    device = next(model.parameters()).device
    low = any(p.dtype == torch.bfloat16 for p in model.backbone.parameters())
    captured: list[Tensor | None] = [None] * (len(blocks) + 1)

    def keep(i: int, h: Tensor) -> None:
        captured[i] = pool_tokens(h.detach().float(), pool, model.spec.n_readout).cpu()

    def before_first(module, args, kwargs) -> None:
        keep(0, args[0] if args else kwargs["hidden_states"])

    hooks = [blocks[0].register_forward_pre_hook(before_first, with_kwargs=True)]
    hooks += [block.register_forward_hook(lambda m, a, out, i=i: keep(i, _hidden(out)))
              for i, block in enumerate(blocks, start=1)]
    was_training = model.training
    model.eval()
    parts: list[list[Tensor]] = [[] for _ in captured]
    try:
        for start in range(0, len(x), batch_size):
            with autocast("bf16" if low else "fp32", device):
                model(x[start:start + batch_size].to(device))
            for i, state in enumerate(captured):
                parts[i].append(state)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return [torch.cat(p) for p in parts]


# ---------------------------------------------------------------- tables and figures


def cka_table(states: dict[str, list[Tensor]]) -> pd.DataFrame:
    """CKA of every block of model_a with every block of model_b, for every pair of names in
    order (a model with itself included), as rows (model_a, model_b, block_a, block_b, cka)."""
    names = list(states)
    sizes = {name: {len(s) for s in states[name]} for name in names}
    if any(len(n) != 1 for n in sizes.values()) or len({next(iter(n)) for n in sizes.values()}) > 1:
        raise ValueError(f"cka_table: every state must hold the same examples; sizes {sizes}")
    units = {name: [_unit(_prepared(s)) for s in states[name]] for name in names}
    rows = []
    for i, a in enumerate(names):
        for b in names[i:]:
            for block_a, x in enumerate(units[a]):
                for block_b, y in enumerate(units[b]):
                    rows.append((a, b, block_a, block_b, _cka_units(x, y)))
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def pairs_of(table: pd.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(table["model_a"], table["model_b"])))


def diagonal_table(table: pd.DataFrame) -> pd.DataFrame:
    """Same-block CKA of each pair of different models: a row per block, a column per pair."""
    same = table[(table["block_a"] == table["block_b"]) & (table["model_a"] != table["model_b"])]
    wide = same.assign(pair=same["model_a"] + " vs " + same["model_b"]).pivot(
        index="block_a", columns="pair", values="cka")
    wide = wide[[f"{a} vs {b}" for a, b in pairs_of(same)]]
    wide.index.name = "block"
    wide.columns.name = None
    return wide


def cka_figure(table: pd.DataFrame, title: str):
    """One heatmap per pair of models: rows are model_a's blocks, columns model_b's."""
    pairs = pairs_of(table)
    cols = min(len(pairs), 3)
    rows = -(-len(pairs) // cols)
    depth = int(max(table["block_a"].max(), table["block_b"].max())) + 1
    side = max(3.2, 0.32 * depth + 1.6)
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols + 0.8, side * rows + 0.9),
                             squeeze=False)
    for ax, (a, b) in zip(axes.flat, pairs):
        here = table[(table["model_a"] == a) & (table["model_b"] == b)]
        grid = here.pivot(index="block_a", columns="block_b", values="cka")
        sns.heatmap(grid, ax=ax, vmin=0, vmax=1, cmap="magma", square=True,
                    annot=depth <= 13, fmt=".2f", annot_kws={"fontsize": 6},
                    cbar_kws={"shrink": 0.8, "label": "linear CKA"})
        ax.invert_yaxis()  # block 0 (the input) at the bottom left, depth upward and rightward
        ax.set_ylabel(textwrap.fill(f"{a}: block", 28))
        ax.set_xlabel(textwrap.fill(f"{b}: block", 28))
        ax.set_title(textwrap.fill(f"{a} vs {b}", 32), fontsize="medium")
    for ax in list(axes.flat)[len(pairs):]:
        ax.set_visible(False)
    wrapped = textwrap.fill(title, width=int(fig.get_figwidth() * 9))
    fig.suptitle(wrapped + "\n(block 0: the input to block 1)")
    fig.tight_layout()
    return fig


def draw_cka(table: pd.DataFrame, png: str | Path, md: str | Path, title: str) -> None:
    """Block-by-block CKA heatmaps (PNG) and the same-block CKA of each pair of models (Markdown)."""
    if table.empty:
        raise ValueError("draw_cka: the CKA table is empty")
    fig = cka_figure(table, title)
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    Path(md).parent.mkdir(parents=True, exist_ok=True)
    Path(md).write_text(cka_markdown(table, title))


def cka_markdown(table: pd.DataFrame, title: str) -> str:
    n_pairs = sum(a != b for a, b in pairs_of(table))
    what = ("Linear CKA (Kornblith et al. 2019) between the states of two models at the same "
            "block, on the same examples: 1 is the same representation up to rotation and "
            "scale; independent random features score about width / examples. Block 0 is the "
            "input to block 1.")
    lines = [f"# {title}", "", what, ""]
    if n_pairs == 0:
        lines.append("Only one model: its same-block CKA is 1 by definition; see the heatmap.")
    else:
        lines.append(diagonal_table(table).to_markdown(floatfmt=".3f"))
    return "\n".join(lines) + "\n"


def cka_matrix(table: pd.DataFrame, a: str, b: str) -> np.ndarray:
    """The block_a x block_b matrix of one pair, for analysis outside the figure."""
    here = table[(table["model_a"] == a) & (table["model_b"] == b)]
    if here.empty:
        raise ValueError(f"cka_matrix: no pair ({a!r}, {b!r}); present: {pairs_of(table)}")
    return here.pivot(index="block_a", columns="block_b", values="cka").to_numpy()


# ---------------------------------------------------------------- a study's figure (cka stage)


def noise_floor(examples: int, width: int, seed: int = 0) -> float:
    """CKA of two independent Gaussian representations of this size: what unrelated models
    would score (the biased estimator is far from 0 unless examples >> width)."""
    g = torch.Generator().manual_seed(seed)
    return linear_cka(torch.randn(examples, width, generator=g),
                      torch.randn(examples, width, generator=g))


def same_block(table: pd.DataFrame) -> pd.DataFrame:
    """Same-block CKA of every pair of different models: a row per pair, a column per block."""
    same = table[(table["block_a"] == table["block_b"]) & (table["model_a"] != table["model_b"])]
    pairs = same["model_a"] + " vs " + same["model_b"]
    wide = same.assign(pair=pairs).pivot(index="pair", columns="block_a", values="cka")
    wide = wide.loc[list(dict.fromkeys(pairs))]
    wide.columns = [f"block {b}" for b in wide.columns]
    wide.index.name = "pair"
    return wide


def last_block_matrix(table: pd.DataFrame) -> pd.DataFrame:
    """Model x model CKA at the deepest block both models share (symmetric, 1 on the diagonal)."""
    names = list(dict.fromkeys([*table["model_a"], *table["model_b"]]))
    last = min(table["block_a"].max(), table["block_b"].max())
    here = table[(table["block_a"] == last) & (table["block_b"] == last)]
    grid = pd.DataFrame(np.nan, index=names, columns=names)
    for a, b, value in zip(here["model_a"], here["model_b"], here["cka"]):
        grid.loc[a, b] = grid.loc[b, a] = value
    return grid


def _floor_of(table: pd.DataFrame) -> float | None:
    if "examples" not in table or "width" not in table or table.empty:
        return None
    return noise_floor(int(table["examples"].iloc[0]), int(table["width"].max()))


def _depth_panel(ax, table: pd.DataFrame, task: str) -> None:
    """Same-block CKA against depth: each modality against the first, and before vs after."""
    modality = table[table["comparison"] == "modality"]
    rows = pd.DataFrame()
    if not modality.empty:
        reference = modality["model_a"].iloc[0]
        wide = same_block(modality)
        rows = wide[wide.index.str.startswith(f"{reference} vs ")]
    colors = sns.color_palette("colorblind", max(len(rows), 1))
    for color, (pair, values) in zip(colors, rows.iterrows()):
        ax.plot(range(len(values)), values.to_numpy(), marker="o", ms=3, color=color,
                label=pair)
    training = table[table["comparison"] == "training"]
    if not training.empty:
        for pair, values in same_block(training).iterrows():
            ax.plot(range(len(values)), values.to_numpy(), "k--", marker="s", ms=3, label=pair)
    floor = _floor_of(table)
    if floor is not None:
        ax.axhline(floor, color="grey", linestyle=":", linewidth=1, label="independent random")
    ax.set_ylim(0, 1.05)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("block (0: input to block 1)")
    ax.set_ylabel("same-block linear CKA")
    ax.set_title(f"{task}: same block, by depth", fontsize="medium")
    ax.legend(fontsize="x-small", loc="lower left")


def _last_block_panel(ax, table: pd.DataFrame, task: str) -> None:
    modality = table[table["comparison"] == "modality"]
    grid = last_block_matrix(modality)
    sns.heatmap(grid, ax=ax, vmin=0, vmax=1, cmap="magma", square=True, annot=True, fmt=".2f",
                annot_kws={"fontsize": 7}, cbar_kws={"shrink": 0.8, "label": "linear CKA"})
    ax.set_title(f"{task}: last block", fontsize="medium")
    ax.tick_params(axis="x", rotation=35)
    ax.tick_params(axis="y", rotation=0)


def draw_cka_study(table: pd.DataFrame, png: str | Path, md: str | Path, title: str) -> None:
    """A study's representation figure (per task: CKA by depth, and the models at the last
    block) and its table (same-block CKA of every pair), from the cka stage's table."""
    if table.empty:
        raise ValueError("draw_cka_study: the CKA table is empty")
    tasks = list(dict.fromkeys(table["task"]))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 4.3 * len(tasks) + 0.6), squeeze=False)
    for (left, right), task in zip(axes, tasks):
        here = table[table["task"] == task]
        _depth_panel(left, here, task)
        if (here["comparison"] == "modality").any():
            _last_block_panel(right, here, task)
        else:
            right.set_visible(False)
    fig.suptitle(textwrap.fill(title, width=100))
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    Path(md).write_text(study_markdown(table, title, tasks))


def study_markdown(table: pd.DataFrame, title: str, tasks: list[str]) -> str:
    floor = _floor_of(table)
    lines = [f"# {title}", "",
             "Linear CKA (Kornblith et al. 2019) between the hidden states (mean over tokens) of "
             "two models at the same block, on the same held-out examples: 1 is the same "
             "representation up to rotation and scale. *modality*: untrained FPTs whose frozen "
             "blocks come from different pretraining, all given the same input layer. "
             "*training*: one FPT before and after its input, positions and layer norms were "
             "trained. Block 0 is the input to block 1."]
    if floor is not None:
        lines += ["", f"Two independent random representations of this size ({int(table['examples'].iloc[0])} "
                  f"examples, width {int(table['width'].max())}) score about {floor:.2f}."]
    for task in tasks:
        lines += ["", f"## {task}", "", same_block(table[table["task"] == task]).to_markdown(
            floatfmt=".3f")]
    return "\n".join(lines) + "\n"
