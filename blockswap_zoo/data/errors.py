"""The dataset errors every loader raises: unknown or corrupt data, and data not found (with how to get it)."""

from __future__ import annotations

__all__ = ["DatasetError", "DatasetNotFoundError"]


class DatasetError(ValueError):
    """A dataset that is unknown or whose files are corrupt."""


class DatasetNotFoundError(FileNotFoundError):
    """A dataset whose files are not where we looked; the message says where and how to get them."""
