"""Counter-based dropout: every keep mask is a pure function of (cell seed, step, dropout site,
element index), computed by an integer hash rather than drawn from a generator.

Why: cells stepped together (fpt_core/together.py) run as one batched computation, and a mask
drawn from a shared generator would depend on which cells share the batch. A hash of the cell's
own seed and step gives each cell the same masks alone, in a pack, or stepped together with any
companions, and a resumed run the masks it would have drawn; no generator state needs saving.

- The key. FPT holds a buffer `dropout_key` = (seed, step), which the trainer sets each step;
  FPT.forward mixes it once and makes it the key of the forward pass (`keyed`), where every
  dropout site reads it. torch.func.functional_call can replace the buffer, so under vmap each
  cell's forward sees its own key.
- Sites. `make_counter_based` replaces every nn.Dropout of a built model by CounterDropout and
  numbers every module in module order (`site`), so each dropout and each attention module
  draws its own masks. The LSTM, whose dropout acts once per time step, draws one mask for all
  its steps (CounterDropout.keep) and applies it a step at a time.
- Attention. Attention-probability dropout happens inside transformers' attention function;
  `attention` is one for transformers' AttentionInterface (fpt_core/backbones/hub.py registers
  it as COUNTER_ATTENTION): with dropout on it computes softmax attention explicitly and drops
  probabilities by the same hash, otherwise it is transformers' fused sdpa function unchanged.
- The hash. The key and site are mixed in 64 bits on scalars (splitmix64's finaliser); each
  element then hashes (index + 32-bit key) with murmur3's 32-bit finaliser, and keeps the
  element where the top 24 bits of the hash reach p * 2^24, so the kept fraction is 1 - p to
  within 2^-24. 32-bit arithmetic per element, in place: on a CPU (AVX-512) a mask takes about
  half the time of torch's Bernoulli draw; with the multiply and its backward a dropout call is
  1.1-1.5x torch's, and a GPT-2-small training step within 3% of one with torch's dropout
  (`fpt bench --only dropout`). 64-bit multiplies per element cost twice as much.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# A transformers attention implementation name, registered by fpt_core/backbones/hub.py.
COUNTER_ATTENTION = "fpt_counter_dropout"
KEY_BUFFER = "dropout_key"
SITE_ATTR = "dropout_site"

_KEY: ContextVar[Tensor | None] = ContextVar("fpt_dropout_key", default=None)
_MAX_ELEMENTS = 1 << 31  # element indices are hashed as int32


def _signed(value: int, bits: int) -> int:
    """An unsigned constant as the signed integer of the same bits (torch has no uint64 math)."""
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


GOLDEN = _signed(0x9E3779B97F4A7C15, 64)
MIX1, MIX2 = _signed(0xBF58476D1CE4E5B9, 64), _signed(0x94D049BB133111EB, 64)
FMIX1, FMIX2 = _signed(0x85EBCA6B, 32), _signed(0xC2B2AE35, 32)
KEEP_BITS = 24


def _shr(z: Tensor, s: int, bits: int) -> Tensor:
    """Logical right shift: torch's >> on signed integers copies the sign bit."""
    return (z >> s) & ((1 << (bits - s)) - 1)


def mix64(z: Tensor) -> Tensor:
    """splitmix64's finaliser on int64 (multiplies wrap, as two's complement does)."""
    z = (z ^ _shr(z, 30, 64)) * MIX1
    z = (z ^ _shr(z, 27, 64)) * MIX2
    return z ^ _shr(z, 31, 64)


def fmix32_(z: Tensor) -> Tensor:
    """murmur3's 32-bit finaliser on int32, in place: one temporary per round rather than four
    fresh tensors, which on the CPU halves the mask's cost (its passes over memory are all of it)."""
    for shift, multiplier in ((16, FMIX1), (13, FMIX2), (16, None)):
        high = z >> shift
        high &= (1 << (32 - shift)) - 1  # a logical shift: >> on signed integers copies the sign
        z ^= high
        if multiplier is not None:
            z *= multiplier
    return z


def step_key(key: Tensor) -> Tensor:
    """The mixed key of a forward pass from the (seed, step) buffer: an int64 scalar."""
    return mix64(mix64(key[0] * GOLDEN) + key[1])


def keep_mask(key: Tensor, site: int, shape: torch.Size, p: float, device: torch.device) -> Tensor:
    """The keep mask (bool, `shape`) of one dropout call: `key` from step_key, `site` the
    module's number."""
    n = shape.numel()
    if n >= _MAX_ELEMENTS:
        raise ValueError(f"counter-based dropout hashes element indices in 32 bits; a tensor of "
                         f"{n} elements is too large")
    z = mix64(key + site)
    low = (z & 0xFFFFFFFF) - (z & 0x80000000) * 2  # the low 32 bits as a signed value
    index = torch.arange(n, dtype=torch.int32, device=device).view(shape)
    h = fmix32_(index + low.to(torch.int32))
    h >>= 32 - KEEP_BITS
    h &= (1 << KEEP_BITS) - 1
    return h >= round(p * (1 << KEEP_BITS))


def counter_dropout(x: Tensor, p: float, site: int) -> Tensor:
    """Dropout of x with the current forward pass's key."""
    if p == 0.0:
        return x
    return apply_keep(x, keep_mask(current_key(), site, x.shape, p, x.device), p)


def apply_keep(x: Tensor, keep: Tensor, p: float) -> Tensor:
    """Inverted dropout, as nn.Dropout: kept values scaled by 1 / (1 - p), in float32 (a bf16
    mask would round 1 / 0.9 to 1.109), the others zero."""
    return torch.where(keep, x * (1.0 / (1.0 - p)), 0.0)


@contextmanager
def keyed(key: Tensor):
    """Make the (seed, step) buffer `key` the dropout key of everything run inside."""
    token = _KEY.set(step_key(key))
    try:
        yield
    finally:
        _KEY.reset(token)


def current_key() -> Tensor:
    key = _KEY.get()
    if key is None:
        raise RuntimeError("counter-based dropout in train mode needs a key: run the model "
                           "through FPT.forward, which sets it from its dropout_key buffer")
    return key


class CounterDropout(nn.Dropout):
    """nn.Dropout whose masks are counter-based; `site` is set by make_counter_based."""

    def __init__(self, p: float = 0.5):
        super().__init__(p)
        self.dropout_site = 0

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        return counter_dropout(x, self.p, self.dropout_site)

    def keep(self, shape: tuple[int, ...], device: torch.device) -> Tensor | None:
        """The keep mask of one call on a tensor of `shape`, for a module that applies it a
        slice at a time (apply_keep); None where nothing drops (eval mode, p = 0)."""
        if not self.training or self.p == 0.0:
            return None
        return keep_mask(current_key(), self.dropout_site, torch.Size(shape), self.p, device)


def make_counter_based(model: nn.Module) -> nn.Module:
    """Replace every nn.Dropout of `model` by a CounterDropout of the same p, and number every
    module (its dropout site), in module order, so the numbers depend on the architecture alone."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Dropout) and not isinstance(child, CounterDropout):
                setattr(module, name, CounterDropout(child.p))
    for site, module in enumerate(model.modules()):
        setattr(module, SITE_ATTR, site)
    return model


def attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
              attention_mask: Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              is_causal: bool | None = None, *, sdpa, **kwargs) -> tuple[Tensor, None]:
    """A transformers attention function (AttentionInterface): transformers' `sdpa` where
    nothing is dropped, else softmax attention with counter-based dropout of the probabilities,
    at the calling module's site. Shapes (batch, heads, tokens, head size) in, (batch, tokens,
    heads, head size) out, as transformers' own functions."""
    if dropout == 0.0:
        return sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=scaling,
                    is_causal=is_causal, **kwargs)
    if kwargs.get("softcap") is not None:
        raise ValueError("counter-based attention dropout does not support softcap")
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:  # grouped-query attention: each key/value head serves `groups` query heads
        key = key.repeat_interleave(groups, dim=1)
        value = value.repeat_interleave(groups, dim=1)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    q_len, kv_len = query.shape[-2], key.shape[-2]
    causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    if attention_mask is None and causal and q_len > 1:
        allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    elif attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    elif attention_mask is not None:
        scores = scores + attention_mask
    if kwargs.get("position_bias") is not None:
        scores = scores + kwargs["position_bias"]
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    probs = counter_dropout(probs, dropout, getattr(module, SITE_ATTR))
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None
