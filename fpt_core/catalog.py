"""What exists, without importing torch: the tasks with their default shapes and the registered
backbones with one line each, so `fpt tasks` and `fpt backbones` answer at once.

The registries build from these tables (backbone summaries) or are tested against them (task
shapes, tests/test_cli.py), so the two never drift apart.
"""

# name: (input kind, tokens, features or vocabulary per token, predictions, classes, what it is)
TASKS = {
    "bit-memory": ("vector", 120, 50, 1000, 2, "recall one of 5 strings of 1000 bits from a half-masked copy"),
    "bit-xor": ("vector", 10, 1, 5, 2, "elementwise XOR of two 5-bit strings"),
    "listops": ("tokens", 512, 15, 1, 10, "LRA ListOps: evaluate nested MIN/MAX/MED/SM lists"),
    "mnist": ("vector", 49, 16, 1, 10, "MNIST digits, 4x4 patches"),
    "cifar10": ("vector", 64, 48, 1, 10, "CIFAR-10, 4x4 colour patches, the paper's augmentation"),
    "cifar10-lra": ("vector", 1024, 1, 1, 10, "CIFAR-10 in grayscale, one pixel per token (LRA)"),
    "remote-homology": ("tokens", 1024, 30, 1, 1195, "TAPE fold classification of protein sequences"),
    "digits": ("vector", 16, 4, 1, 10, "scikit-learn's 8x8 digits, 2x2 patches (no download)"),
}

BACKBONES = {
    "gpt2": "GPT-2 small: 12 blocks, hidden 768, 124M (hub)",
    "gpt2-medium": "GPT-2 medium: 24 blocks, hidden 1024, 355M (hub)",
    "gpt2-large": "GPT-2 large: 36 blocks, hidden 1280, 774M (hub)",
    "gpt2-xl": "GPT-2 XL: 48 blocks, hidden 1600, 1.5B (hub)",
    "gpt2-tiny": "GPT-2 architecture, 2 blocks, hidden 64; random only",
    "smollm2-135m": "SmolLM2-135M-Instruct: LLaMA-style, 30 blocks, hidden 576, rotary (offline)",
    "minilm-l6": "all-MiniLM-L6-v2: BERT encoder, 6 blocks, hidden 384 (offline)",
    "bert-base": "BERT base uncased: 12 blocks, hidden 768 (hub)",
    "vit-base": "ViT-B/16 ImageNet-21k: 12 blocks, hidden 768 (hub)",
    "lstm": "the paper's 3-layer layer-norm LSTM, hidden 768; random only",
}


def task_lines() -> list[str]:
    width = max(map(len, TASKS))
    return [f"{name:<{width}}  {kind:<6} {tokens:>4} tokens x {dim:<3} -> {preds} x {classes} classes  {what}"
            for name, (kind, tokens, dim, preds, classes, what) in TASKS.items()]


def backbone_lines() -> list[str]:
    width = max(map(len, BACKBONES))
    return [f"{name:<{width}}  {summary}" for name, summary in BACKBONES.items()]
