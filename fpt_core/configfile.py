"""Config files read strictly: YAML silently keeps the last of two equal keys, so two ablations
with the same name would quietly become one."""
from __future__ import annotations

from pathlib import Path

import yaml

from fpt_core.errors import ConfigError


class _StrictLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                path = ".".join(self._path(node) + [str(key)])
                raise ConfigError(
                    f"{path}: duplicate key (lines {seen[key] + 1} and {key_node.start_mark.line + 1} "
                    f"of {self.name}); names must be unique"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def _path(self, target) -> list[str]:
        """Keys leading from the document root to `target`, for the message."""
        def walk(node, trail):
            if node is target:
                return trail
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    found = walk(v, trail + [str(k.value)])
                    if found is not None:
                        return found
            return None
        return walk(self._root, []) or []

    def construct_document(self, node):
        self._root = node
        return super().construct_document(node)


def load_strict(path: str | Path) -> dict:
    """The YAML config at `path`, refusing duplicate keys with a one-line ConfigError."""
    with open(path) as f:
        loader = _StrictLoader(f)
        loader.name = str(path)
        try:
            return loader.get_single_data() or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"{where}: not valid YAML ({problem})") from None
        finally:
            loader.dispose()
