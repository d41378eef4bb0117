"""What exists: the registered tasks with their default shapes, and the registered backbones
with one line each.

Task rows are read from the task classes (description, spec with default options, baseline,
options), so a task registered anywhere is listed; reading them imports the tasks, and torch.
Backbone summaries are a table here, so `fpt backbones` answers without importing torch; the
backbone registry builds its summaries from it.
"""
from __future__ import annotations

from typing import NamedTuple


class TaskRow(NamedTuple):
    kind: str  # input kind: vector or tokens
    tokens: int  # tokens per example, with default options
    dim: int  # features or vocabulary per token
    predictions: int  # predictions per example
    classes: int  # classes per prediction
    description: str
    chance: float  # accuracy of uniform guessing
    baseline: float | None  # accuracy of the task's trivial strategy, where it has one
    options: dict  # option name -> Option


def task_rows() -> dict[str, TaskRow]:
    """Every registered task's row, in registration order."""
    from fpt_core.tasks import TASKS  # noqa: PLC0415 (`fpt backbones` must not load torch)

    rows = {}
    for name, cls in TASKS.items():
        spec = cls().spec  # default options; no data is read
        rows[name] = TaskRow(spec.input_kind, spec.n_tokens, spec.input_dim, spec.n_predictions,
                             spec.n_classes, cls.description, spec.chance, cls.baseline,
                             dict(cls.options))
    return rows


def __getattr__(name: str):
    """`catalog.TASKS`: task_rows(), read when asked for, so importing the catalog stays light."""
    if name == "TASKS":
        return task_rows()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


BACKBONES = {
    "gpt2": "GPT-2 small: 12 blocks, hidden 768, 124M (hub)",
    "gpt2-medium": "GPT-2 medium: 24 blocks, hidden 1024, 355M (hub)",
    "gpt2-large": "GPT-2 large: 36 blocks, hidden 1280, 774M (hub)",
    "gpt2-xl": "GPT-2 XL: 48 blocks, hidden 1600, 1.5B (hub)",
    "gpt2-tiny": "GPT-2 architecture, 2 blocks, hidden 64; random only",
    "smollm2-135m": "SmolLM2-135M-Instruct: LLaMA-style, 30 blocks, hidden 576, rotary (offline)",
    "minilm-l6": "all-MiniLM-L6-v2: BERT encoder, 6 blocks, hidden 384 (offline)",
    "bert-base": "BERT base uncased: 12 blocks, hidden 768 (hub)",
    "vit-base": "ViT-B/16 pretrained on ImageNet-21k only, not fine-tuned: 12 blocks, hidden 768 (hub)",
    "vit-base-in21k-ft-in1k": "ViT-B/16 ImageNet-21k, fine-tuned on ImageNet-1k at 224, the paper's "
                              "timm vit_base_patch16_224: 12 blocks, hidden 768 (hub)",
    "lstm": "the paper's 3-layer layer-norm LSTM, hidden 768; random only",
    "none@<base>": "Tan et al. 2024 w/o LLM: <base>'s positions and outer norms, no blocks; random only",
    "attention@<base>": "Tan et al. 2024 LLM2Attn: one attention layer of <base>'s width; random only",
    "block@<base>": "Tan et al. 2024 LLM2Trsf: one block of <base>'s width; random only",
}


def task_lines() -> list[str]:
    """`fpt tasks`: a line per task (shape with default options, description, trivial baseline),
    then a line per option it takes."""
    rows = task_rows()
    width = max(map(len, rows))
    lines = []
    for name, row in rows.items():
        baseline = f" (trivial baseline {row.baseline:.0%})" if row.baseline is not None else ""
        lines.append(f"{name:<{width}}  {row.kind:<6} {row.tokens:>4} tokens x {row.dim:<3} -> "
                     f"{row.predictions} x {row.classes} classes  {row.description}{baseline}")
        for option, spec in row.options.items():
            lines.append(f"{'':<{width}}    {option}: {' | '.join(spec.allowed)} (default "
                         f"{spec.default}): {spec.help}")
    return lines


def backbone_lines() -> list[str]:
    width = max(map(len, BACKBONES))
    return [f"{name:<{width}}  {summary}" for name, summary in BACKBONES.items()]
