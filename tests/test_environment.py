"""The two ways to install agree: install.sh (a venv) and environment.yml (conda, Snakemake's
--use-conda) pin the same torch and take every other dependency from pyproject.toml."""
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_pins_install_sh_torch_and_installs_the_project():
    pip = next(d["pip"] for d in yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
               if isinstance(d, dict))
    default_torch = re.search(r"\$\{TORCH:-([^}]*)\}", (ROOT / "install.sh").read_text()).group(1)
    assert [p for p in pip if not p.startswith("-e")] == default_torch.split()
    assert "-e .[test]" in pip
