"""Model helpers shared by tests."""
from pathlib import Path


def dropout_free_gpt2(directory: Path) -> str:
    """A tiny random GPT-2 saved with every dropout at 0; backbone=<it> with init=pretrained and a
    cell dropout of 0 then trains without any dropout, through the real loading path."""
    from transformers import GPT2Config, GPT2Model

    path = Path(directory) / "gpt2-no-dropout"
    if not (path / "config.json").exists():
        config = GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=128, vocab_size=256,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        GPT2Model(config).save_pretrained(path)
    return str(path)
