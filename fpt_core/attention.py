"""The attention-maps stage: what a trained cell's frozen blocks attend to, as a table."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from fpt_core.train import load_trained


def attention_table(model_path: str | Path, examples: int = 1) -> pd.DataFrame:
    """Head-averaged attention of a trained cell's frozen blocks on held-out examples.

    Long format, one row per (example, layer, query, key), so figures need no model.
    """
    cell, model, task = load_trained(model_path)
    x, _ = next(iter(task.eval_batches(examples)))
    with torch.no_grad():
        maps = model.attention_maps(x[:examples])
    rows = []
    for layer, weights in enumerate(maps):
        mean = weights.float().mean(dim=1)  # (B, T, T)
        b, t, _ = mean.shape
        index = pd.MultiIndex.from_product(
            [range(b), range(t), range(t)], names=["example", "query", "key"])
        frame = pd.DataFrame({"weight": mean.reshape(-1).numpy()}, index=index).reset_index()
        frame.insert(1, "layer", layer)
        rows.append(frame)
    table = pd.concat(rows, ignore_index=True)
    table.insert(0, "cell_id", cell.id)
    table.insert(1, "task", cell.task)
    table["weight"] = table["weight"].astype("float32")
    return table
