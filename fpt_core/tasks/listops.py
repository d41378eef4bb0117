"""ListOps from Long Range Arena: the TSV reader, two tokenizations, and LRA's generator.

An expression such as `( ( ( [MAX 2 ) 9 ) ] )` is labelled with its value, 0..9. The paper's
code tokenized with tfds' alphanumeric-only Tokenizer, which drops every bracket: `MAX 2 9`, a
15-symbol vocabulary (pad, ten digits, four operators). The `fixed` tokenization keeps `]`, `(`
and `)` as three more symbols. Both share the ids of the symbols they have in common, so a fixed
sequence with its bracket ids removed is the paper's sequence.
"""
from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fpt_core.atomic import atomic_path
from fpt_core.errors import ConfigError
from fpt_core.tasks.base import PADDING, DataError, ReleaseValidation, TaskSpec, missing
from fpt_core.tasks.registry import Option, register

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")  # LRA's ops; FIRST and LAST are commented out there
END = "]"
VALUE_P = 0.25  # LRA: probability that a node (above max depth) is a plain value

# id 0 is padding; the paper's 14 symbols come first so both tokenizations share their ids.
SYMBOLS = [str(d) for d in range(10)] + ["MAX", "MIN", "MED", "SM"] + ["]", "(", ")"]
PAPER_VOCAB = 1 + 14
FIXED_VOCAB = 1 + len(SYMBOLS)
TOKENIZERS = ("paper", "fixed")
DEFAULT_LEN = 512  # the paper's max_length

# Each token becomes one byte (operators are shortened first), then one bytes.translate maps
# every byte to its id, drops whitespace (and, for the paper, brackets) and marks row ends.
_BYTE_OF_OP = ((b"[MAX", b"A"), (b"[MIN", b"I"), (b"[MED", b"E"), (b"[SM", b"S"))
_ROW_END, _UNKNOWN = 254, 255
_IDS = bytearray([_UNKNOWN]) * 256
for _id, _char in enumerate("0123456789AIES]()", start=1):
    _IDS[ord(_char)] = _id
_IDS[ord("\n")] = _ROW_END
_SOLID = bytes(c if chr(c) in " \t\n" else ord("x") for c in range(256))
_KNOWN = {str(d) for d in range(10)} | set(OPERATORS) | {END, "(", ")"}


class UnknownToken(DataError):
    def __init__(self, sources: list[bytes]):
        self.row, self.token = next(
            ((row, token) for row, source in enumerate(sources)
             for token in source.decode(errors="replace").split() if token not in _KNOWN), (0, "?"))
        super().__init__(f"unknown ListOps token {self.token!r}; expected digits 0-9, "
                         f"{', '.join(OPERATORS)}, {END}, ( and )")


def encode_rows(sources: list[bytes], tokenizer: str, n_tokens: int, right: bool = False) -> np.ndarray:
    """Ids (len(sources), n_tokens) uint8 of many expressions, left-padded (or right-padded, as
    the paper's code did), keeping the first tokens.

    Raises UnknownToken, which names the row, for a token outside the vocabulary.
    """
    blob = b"\n".join(sources)
    for op, byte in _BYTE_OF_OP:
        blob = blob.replace(op, byte)
    compact = blob.translate(_IDS, b" \t()]" if tokenizer == "paper" else b" \t")
    # Two solid bytes in a row are a token this vocabulary lacks (a multi-digit value, say).
    if b"xx" in blob.translate(_SOLID) or bytes([_UNKNOWN]) in compact:
        raise UnknownToken(sources)
    ids = np.frombuffer(compact, dtype=np.uint8)
    is_token = ids != _ROW_END
    row_of = np.cumsum(~is_token)[is_token]
    tokens = ids[is_token]
    counts = np.bincount(row_of, minlength=len(sources))
    pos = np.arange(len(tokens)) - (np.cumsum(counts) - counts)[row_of]
    first = pos < n_tokens
    lengths = np.minimum(counts, n_tokens)
    out = np.zeros((len(sources), n_tokens), dtype=np.uint8)
    column = pos[first] if right else n_tokens - lengths[row_of[first]] + pos[first]
    out[row_of[first], column] = tokens[first]
    return out


def read_tsv(path: Path, tokenizer: str, n_tokens: int, chunk: int = 2048,
             right: bool = False) -> tuple[Tensor, Tensor]:
    """LRA's TSV (columns Source, Target): ids (N, n_tokens) uint8 left- (or right-) padded, labels (N, 1).

    Sequences longer than n_tokens keep their first n_tokens tokens, as the paper's pipeline did.
    """
    lines = [line.rstrip(b"\r") for line in path.read_bytes().split(b"\n")]
    header = lines[0].split(b"\t")
    if b"Source" not in header or b"Target" not in header:
        raise DataError(f"{path}: header must name the columns Source and Target, found "
                        f"{b' '.join(header).decode(errors='replace')!r}")
    src, tgt = header.index(b"Source"), header.index(b"Target")
    numbered = [(n, line.split(b"\t")) for n, line in enumerate(lines[1:], start=2) if line.strip()]
    labels = np.empty(len(numbered), dtype=np.int64)
    for i, (n, fields) in enumerate(numbered):
        if len(fields) != len(header):
            raise DataError(f"{path}:{n}: {len(fields)} tab-separated fields, header has {len(header)}")
        target = fields[tgt].strip()
        if not (target.isdigit() and 0 <= int(target) <= 9):
            raise DataError(f"{path}:{n}: Target {target.decode(errors='replace')!r} is not 0..9")
        labels[i] = int(target)
    ids = np.zeros((len(numbered), n_tokens), dtype=np.uint8)
    for start in range(0, len(numbered), chunk):
        part = numbered[start:start + chunk]
        try:
            ids[start:start + len(part)] = encode_rows([f[src] for _, f in part], tokenizer,
                                                       n_tokens, right)
        except UnknownToken as e:
            raise DataError(f"{path}:{part[e.row][0]}: {e}") from None
    return torch.from_numpy(ids), torch.from_numpy(labels)[:, None]


# ---------------------------------------------------------------- LRA's generator

def generate_tree(rng: random.Random, depth: int, max_depth: int, max_args: int) -> tuple[str, int, int]:
    """One random expression as LRA draws it: (source text, value, LRA's length)."""
    is_value = depth >= max_depth or rng.random() > VALUE_P
    if is_value:
        value = rng.choice(range(10))
        return str(value), value, 1
    children = [generate_tree(rng, depth + 1, max_depth, max_args)
                for _ in range(rng.randint(2, max_args))]
    op = rng.choice(OPERATORS)
    texts, values = [c[0] for c in children], [c[1] for c in children]
    # LRA nests binary tuples ((op, a), b) ... END, each wrapped in parentheses by to_string.
    text = "( " * (len(children) + 1) + f"{op} {texts[0]} )" + "".join(f" {t} )" for t in texts[1:])
    return text + f" {END} )", apply(op, values), 2 + sum(c[2] for c in children)


def apply(op: str, values: list[int]) -> int:
    if op == "[MIN":
        return min(values)
    if op == "[MAX":
        return max(values)
    if op == "[MED":
        s = sorted(values)
        mid = len(s) // 2
        return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) // 2  # int(np.median(...))
    return sum(values) % 10


def max_tree_length(max_depth: int, max_args: int) -> int:
    length = 1
    for _ in range(max_depth - 1):
        length = 2 + max_args * length
    return length


def generate(n: int, *, max_depth: int = 10, max_args: int = 10, min_length: int | None = None,
             max_length: int = 2000, seed: int = 0) -> list[tuple[str, int]]:
    """`n` distinct (source, target) pairs with min_length < length < max_length, as LRA's generator.

    min_length defaults to max_length // 4, LRA's 500 for its 2000.
    """
    min_length = max_length // 4 if min_length is None else min_length
    if max_depth < 2 or max_args < 2:
        raise ConfigError(f"max_depth, max_args: must both be >= 2, got {max_depth}, {max_args}")
    if max_length - min_length < 2 or max_tree_length(max_depth, max_args) <= min_length:
        raise ConfigError(f"min_length: no expression of depth <= {max_depth} with <= {max_args} "
                          f"arguments has length in ({min_length}, {max_length})")
    rng = random.Random(seed)
    found: dict[str, int] = {}  # LRA keeps a set of distinct trees; a dict keeps the order seeded
    for _ in range(1000 * n + 1_000_000):
        if len(found) == n:
            break
        text, value, length = generate_tree(rng, 1, max_depth, max_args)
        if min_length < length < max_length:
            found.setdefault(text, value)
    else:
        raise ConfigError(f"n_train: only {len(found)} distinct expressions found for the lengths, "
                          f"depth and arguments asked; ask for fewer or allow longer ones")
    return list(found.items())


def write_tsv(rows: list[tuple[str, int]], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["Source", "Target"])
        writer.writerows(rows)


@register
class ListOps(ReleaseValidation):
    name = "listops"
    description = "LRA ListOps: evaluate nested MIN/MAX/MED/SM lists"
    # The held-out split is basic_val.tsv, which the paper's code scored (get_datasets' second
    # output); with val_size it validates and basic_test.tsv is scored.
    split_sizes = (96_000, 2000)
    val_split, test_split, test_size = "val", "test", 2000
    options = {
        "tokenizer": Option(TOKENIZERS, "paper", "paper drops the brackets, as the paper's code "
                            "(a known LRA tokenizer bug); fixed keeps them"),
        "padding": PADDING,
    }
    root = "listops"

    def make_spec(self) -> TaskSpec:
        return TaskSpec(name=self.name, input_kind="tokens",
                        input_dim=PAPER_VOCAB if self.tokenizer == "paper" else FIXED_VOCAB,
                        n_tokens=self.max_len or DEFAULT_LEN, n_classes=10, n_readout=1,
                        n_predictions=1, chance=0.1, threshold=0.36)

    @classmethod
    def folder(cls, data_dir) -> Path:
        return Path(data_dir) / cls.root

    def data_files(self) -> list[Path]:
        return [self.folder(self.data_dir) / f"basic_{s}.tsv" for s in self.splits_read()]

    @classmethod
    def prepare(cls, data_dir, *, n_train: int = split_sizes[0], n_val: int = split_sizes[1],
                n_test: int = test_size, max_depth: int = 10, max_args: int = 10,
                min_length: int | None = None, max_length: int = 2000, seed: int = 0) -> None:
        """Generate basic_{train,val,test}.tsv in data_dir/listops with LRA's generator, offline."""
        counts = [int(n_train), int(n_val), int(n_test)]
        rows = generate(sum(counts), max_depth=int(max_depth), max_args=int(max_args),
                        min_length=None if min_length is None else int(min_length),
                        max_length=int(max_length), seed=int(seed))
        folder = cls.folder(data_dir)
        folder.mkdir(parents=True, exist_ok=True)
        start = 0
        for split, count in zip(cls.release_splits(), counts):
            write_tsv(rows[start:start + count], folder / f"basic_{split}.tsv")
            start += count

    @classmethod
    def write_fixture(cls, folder: Path, seed: int = 0, n_train: int = 32, n_val: int = 16,
                      n_test: int = 16) -> dict:
        """basic_{train,val,test}.tsv of short expressions from LRA's generator, each split
        cycling through every value 0..9."""
        counts = (n_train, n_val, n_test)
        pool = generate(20 * sum(counts), max_depth=4, max_args=4, min_length=5, max_length=60,
                        seed=seed)
        by_value: dict[int, list[tuple[str, int]]] = {v: [] for v in range(10)}
        for text, value in pool:
            by_value[value].append((text, value))
        # deal the values round-robin so each split cycles through every value the pool holds
        dealt = [rows[i] for i in range(len(pool)) for rows in by_value.values() if i < len(rows)]
        out, start = {}, 0
        for split, n in zip(cls.release_splits(), counts):
            out[split] = dealt[start:start + n]
            write_tsv(out[split], Path(folder) / f"basic_{split}.tsv")
            start += n
        return out

    def _load(self) -> None:
        files = self.data_files()
        if not all(f.exists() for f in files):
            raise missing(self.name, self.folder(self.data_dir), [f.name for f in files],
                          "generate them offline with `fpt data listops dir=DATA_DIR`, or take "
                          "lra_release/listops-1000/ from "
                          "https://storage.googleapis.com/long-range-arena/lra_release.gz")
        # Right padding is the paper's: zeros after the tokens up to max_len, and the model reads
        # the last position, a pad for every expression shorter than max_len.
        right = self.padding == "right"
        train, held_out, *val = [read_tsv(f, self.tokenizer, self.spec.n_tokens, right=right)
                                 for f in files]
        self._set_train(*train)
        self._set_held_out(*held_out)
        if val:
            self._set_validation(*val[0])

    def _features(self, raw: Tensor, aug: torch.Generator | None) -> Tensor:
        return raw.long()
