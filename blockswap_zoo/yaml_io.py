"""Settings YAML (recipes, ``--config`` files) read as plain data: safe tags only and no aliases.

``yaml.safe_load`` never runs code, but it expands aliases: a few hundred bytes of nested ``*refs``
become gigabytes once anything (an error message, a repr) walks the result. Settings files have no
use for aliases, so they are refused where they appear; so is a key given twice (YAML keeps the last
silently). Size and nesting are bounded (``limits``): PyYAML composes nested nodes recursively, and
deep ``[[[...]]]`` would otherwise end in a RecursionError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .limits import MAX_SETTINGS_BYTES, MAX_SETTINGS_DEPTH

__all__ = ["SettingsFileError", "load_yaml", "read_settings_text"]


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

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: ANN401 - yaml's own signature
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed here; write the value out", mark
            )
        if self._depth >= MAX_SETTINGS_DEPTH:
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_SETTINGS_DEPTH} levels deep; settings files need a few", mark
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(text: str) -> Any:  # noqa: ANN401 - YAML gives any plain data
    """Parse ``text`` with safe tags only, refusing aliases, more than 1 MiB and deep nesting (raises
    yaml.YAMLError)."""
    if len(text) > MAX_SETTINGS_BYTES:
        raise yaml.YAMLError(
            f"{len(text):,} characters is more than a settings file needs (at most {MAX_SETTINGS_BYTES:,})"
        )
    return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


class SettingsFileError(ValueError):
    """A settings file that cannot be read as text: missing, unreadable, not UTF-8 or too large."""


def read_settings_text(path: Path) -> str:
    """The text of a settings file, refusing one over the size bound before reading it; SettingsFileError
    naming the file and the problem otherwise."""
    try:
        size = path.stat().st_size
        if size > MAX_SETTINGS_BYTES:
            raise SettingsFileError(
                f"{path}: {size:,} bytes is more than a settings file needs (at most {MAX_SETTINGS_BYTES:,})"
            )
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise SettingsFileError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise SettingsFileError(f"{path}: not UTF-8 text; a settings file is YAML") from None
