"""The README's commands as Snakemake parses them: `--configfile` takes every word after it up
to the next option as a config file, so a target written after it is read as a file."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "paper/PROTOCOL.md", "config/config.yaml", "config/paper.yaml",
        "config/critics.yaml", "Snakefile")


def commands():
    for doc in DOCS:
        for n, line in enumerate((ROOT / doc).read_text().splitlines(), 1):
            command = line.lstrip("# `").split("  ")[0].split("`")[0]  # a comment follows two spaces
            if command.startswith("snakemake "):
                yield f"{doc}:{n}", command.split()


def test_no_snakemake_command_puts_a_target_after_configfile():
    found = list(commands())
    assert len(found) > 10
    for where, words in found:
        if "--configfile" in words:
            after = words[words.index("--configfile") + 1:]
            files = after[:next((i for i, w in enumerate(after) if w.startswith("-")), len(after))]
            assert all(re.search(r"\.(ya?ml|json)$", f) for f in files), (where, " ".join(words))
