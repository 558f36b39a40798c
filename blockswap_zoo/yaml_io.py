"""Settings YAML (recipes, ``--config`` files) read as plain data: safe tags only and no aliases.

``yaml.safe_load`` never runs code, but it expands aliases: a few hundred bytes of nested ``*refs``
become gigabytes once anything (an error message, a repr) walks the result. Settings files have no
use for aliases, so they are refused where they appear; so is a key given twice (YAML keeps the last
silently).
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["load_yaml"]


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that raises on an alias instead of expanding it, and on a key given twice."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:  # noqa: ANN401 - yaml's own signature
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice; keep one", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: ANN401 - yaml's own signature
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed here; write the value out", mark
            )
        return super().compose_node(parent, index)


def load_yaml(text: str) -> Any:  # noqa: ANN401 - YAML gives any plain data
    """Parse ``text`` with safe tags only, refusing aliases (raises yaml.YAMLError)."""
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
