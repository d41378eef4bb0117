"""paper/reported.csv: every paper number says where it comes from, and the figures call it
comparable exactly where config/paper.yaml trains the setting the paper reported it for."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fpt_core.summaries import comparable, load_reported

ROOT = Path(__file__).resolve().parents[1]
REPORTED = ROOT / "paper" / "reported.csv"
PAPER_CONFIG = ROOT / "config" / "paper.yaml"
PROTOCOL = ROOT / "paper" / "PROTOCOL.md"

# The benchmark papers the paper quotes or coincides with, and the numbers of theirs that
# reported.csv refers to (LRA: percent; TAPE: fractions), read from the papers' tables.
SOURCES = {
    "LRA": {"arxiv": "2011.04006", "numbers": {"36.37", "42.44", "37.27"}},
    "TAPE": {"arxiv": "1906.08230", "numbers": {"0.09", "0.12"}},
}

# Paper numbers from a setting config/paper.yaml does not train, keyed (table, experiment, row,
# task). Each entry's reason is checked against the config where the config decides it, so a
# config that comes to train the paper's setting makes this test ask for the note to go.
OTHER_SETTING = {
    ("1", "headline", "fpt", "cifar10"): "backbone",            # gpt2-large in the paper
    ("1", "headline", "full-transformer", "listops"): "source",  # not LRA's number
    ("1", "headline", "full-transformer", "cifar10"): "depth",   # a 3-layer model
    ("1", "headline", "full-transformer", "cifar10-lra"): "source",
    ("1", "headline", "full-transformer", "remote-homology"): "source",  # TAPE's test set
    ("1", "headline", "full-lstm", "remote-homology"): "source",
    ("7", "overfitting", "transformer-3-layers-test", "cifar10-lra"): "source",
}

# The groups the paper trained in Table 16's layer-norm-frozen rows: layer norm frozen as the
# official code's freeze_ln does it, which leaves the positions trained (freeze_pos is False).
TABLE16_FROZEN_LN = {"input", "positions", "output"}

# The paper's FPT: input layer, positions, layer norm, output layer; `all` adds the blocks.
FPT_GROUPS = {"input", "positions", "layernorm", "output"}
ALL_GROUPS = FPT_GROUPS | {"attention", "feedforward"}
GROUP_WORDS = {"input": "input", "output": "output", "positions": "positions", "pos": "positions",
               "layer norm": "layernorm", "layernorm": "layernorm", "ln": "layernorm",
               "attention": "attention", "feedforward": "feedforward",
               "feed-forward": "feedforward"}


@pytest.fixture(scope="module")
def reported() -> pd.DataFrame:
    table = load_reported(REPORTED)
    assert table is not None, f"{REPORTED} is missing"
    return table.assign(note=table["note"].fillna(""))


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(PAPER_CONFIG.read_text())


def key(row) -> tuple[str, str, str, str]:
    return (str(row.table), row.experiment, row.row, row.task)


def config_row(config: dict, experiment: str, row: str) -> dict:
    """A reported row's settings in config/paper.yaml: defaults, the ablation's `set`, the row.
    Table 7 reports one run twice (-train, -test)."""
    ablation = config["ablations"][experiment]
    name = re.sub(r"-(train|test)$", "", row) if experiment == "overfitting" else row
    return {**config["defaults"], **ablation.get("set", {}), **ablation["rows"][name]}


def trained_groups(settings: dict) -> set[str]:
    trainable = settings["trainable"]
    if trainable == "fpt":
        return set(FPT_GROUPS)
    if trainable == "all":
        return set(ALL_GROUPS)
    return set(trainable)


def test_rows_are_unique_and_numeric(reported):
    # Figures look a number up by (experiment, row, task): a duplicate would hide one of two.
    keys = reported[["experiment", "row", "task"]].apply(tuple, axis=1)
    assert not keys.duplicated().any(), list(keys[keys.duplicated()])
    assert reported["value"].map(lambda v: math.isfinite(float(v))).all()


def source_notes(reported: pd.DataFrame) -> pd.DataFrame:
    """Rows whose note says where the number comes from: quoted, or equal to (or not) a
    benchmark paper's number. The homology caveat names TAPE's split, not a source."""
    claims = reported["note"].str.replace("TAPE valid split", "", regex=False)
    return reported[claims.str.contains(r"quoted|\bLRA\b|\bTAPE\b", regex=True)]


def test_every_source_note_names_paper_arxiv_table_and_number(reported):
    rows = source_notes(reported)
    # exactly the rows shown apart for their source carry a source note
    shown_apart = {k for k, why in OTHER_SETTING.items() if why == "source"}
    assert set(map(key, rows.itertuples())) == shown_apart
    for row in rows.itertuples():
        cited = [name for name in SOURCES if re.search(rf"\b{name}\b", row.note)]
        assert cited, f"{key(row)}: names no source paper: {row.note!r}"
        for name in cited:
            assert f"arXiv {SOURCES[name]['arxiv']}" in row.note, f"{key(row)}: no arXiv id"
        assert re.search(r"\bTable \d+", row.note), f"{key(row)}: names no table: {row.note!r}"
        numbers = set(re.findall(r"\b\d+\.\d+\b", row.note))
        theirs = numbers & set().union(*(SOURCES[name]["numbers"] for name in cited))
        assert theirs, f"{key(row)}: gives none of the source's own numbers: {row.note!r}"


def percent(number: str) -> float:
    value = float(number)
    return value * 100 if value < 1 else value


def test_source_notes_say_truly_how_the_value_relates_to_the_source(reported):
    # "exactly": the value is the source's number (TAPE's fraction as a percentage); "rounded":
    # the paper's rounding of it; "not ...'s number": no rounding of it gives the value.
    for row in source_notes(reported).itertuples():
        value = float(row.value)
        theirs = [n for n in re.findall(r"\b\d+\.\d+\b", row.note)
                  if any(n in s["numbers"] for s in SOURCES.values())]
        assert theirs, f"{key(row)}: gives none of the source's own numbers: {row.note!r}"
        first = percent(theirs[0])
        if "exactly" in row.note:
            assert math.isclose(first, value), f"{key(row)}: {theirs[0]} is not {value}"
        elif "rounded" in row.note:
            assert first != value and round(first) == value, f"{key(row)}: {theirs[0]} vs {value}"
        elif re.search(r"\bnot \w+'s number", row.note):
            assert all(round(percent(n)) != value for n in theirs), key(row)
        else:
            pytest.fail(f"{key(row)}: says neither exactly, rounded nor not: {row.note!r}")


def test_quoted_numbers_are_never_rescaled(reported):
    # A number quoted from TAPE was scored on TAPE's test set by TAPE's model: the paper's
    # x0.9739 (its own sequences over 1024 tokens) never applied to it.
    quoted = reported[reported["note"].str.contains("quoted from TAPE")]
    assert len(quoted) and quoted["task"].eq("remote-homology").all()
    assert not quoted["note"].str.contains("rescaled x").any()
    assert quoted["note"].str.contains("not rescaled").all()


def test_comparable_exactly_where_the_config_trains_the_papers_setting(reported):
    for row in reported.itertuples():
        expected = key(row) not in OTHER_SETTING
        assert comparable(row.note) == expected, (
            f"{key(row)}: comparable({row.note!r}) should be {expected}")
    assert set(OTHER_SETTING) <= set(map(key, reported.itertuples())), "a row was renamed"


@pytest.mark.parametrize("entry", sorted(set(OTHER_SETTING.items()), key=str))
def test_each_other_setting_still_differs_in_the_config(entry, config):
    (_, experiment, row, _), reason = entry
    settings = config_row(config, experiment, row)
    if reason == "backbone":  # the paper's CIFAR-10 FPT headline is GPT-2 large
        assert settings["backbone"] != "gpt2-large"
    elif reason == "depth":  # the paper's CIFAR-10 full transformer has 3 blocks
        assert settings.get("depth") != 3
    else:
        assert reason == "source"  # a number from another paper, or one whose source is open


def test_layernorm_frozen_rows_train_what_table16_trained_and_compare(reported, config):
    for row in ("pretrained-ln-frozen", "random-ln-frozen"):
        assert trained_groups(config_row(config, "layernorm-necessity", row)) == TABLE16_FROZEN_LN
        hit = reported[(reported["experiment"] == "layernorm-necessity") & (reported["row"] == row)]
        assert len(hit) == 1 and comparable(hit["note"].iloc[0]), (row, list(hit["note"]))


def groups_named(note: str) -> set[str]:
    words = re.findall(r"layer norm|feed-forward|[a-z]+", note.lower())
    return {GROUP_WORDS[w] for w in words if w in GROUP_WORDS}


def test_no_note_restates_its_rows_own_setting(reported, config):
    # A note that names what the row's cell trains says nothing the row does not, and marks
    # a number of the row's own setting as another setting.
    for row in reported.itertuples():
        if not row.note or row.experiment not in config["ablations"]:
            continue
        rows = config["ablations"][row.experiment]["rows"]
        if re.sub(r"-(train|test)$", "", row.row) not in rows:
            continue
        own = trained_groups(config_row(config, row.experiment, row.row))
        named = groups_named(row.note)
        assert not ("trained" in row.note and named == own), f"{key(row)}: {row.note!r}"


def test_protocol_explains_every_other_setting_number(reported):
    # PROTOCOL.md's list of paper numbers from another setting is what a reader of a figure
    # looks up; each such number must be there, by table and by value or row.
    text = PROTOCOL.read_text()
    start = text.index("**Paper numbers from another setting**")
    bullets = re.findall(r"^- (.+(?:\n  .+)*)", text[start:text.index("\n\n**", start)],
                         re.MULTILINE)
    for row in reported.itertuples():
        if comparable(row.note):
            continue
        value = re.compile(rf"(?<![\d.]){re.escape(f'{float(row.value):g}')}(?!\.?\d)")
        assert any(f"Table {row.table}" in b and (value.search(b) or row.row in b)
                   for b in bullets), key(row)
