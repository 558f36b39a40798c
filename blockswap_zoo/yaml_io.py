"""Settings YAML (recipes, ``--config`` files) read as plain data: safe tags only and no aliases.

``yaml.safe_load`` never runs code, but it expands aliases: a few hundred bytes of nested ``*refs``
become gigabytes once anything (an error message, a repr) walks the result. Settings files have no
use for aliases, so they are refused where they appear.
"""

from __future__ import annotations

from typing import Any

import yaml

__all__ = ["load_yaml"]


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that raises on an alias instead of expanding it."""

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
