"""torchvision's ImageFolder with a fixed class list and errors that name the folder or file.

Imported lazily (torchvision is heavy); a module-level class, so DataLoader workers can pickle it.
"""

from __future__ import annotations

import os
from pathlib import Path

from torchvision.datasets import ImageFolder

from .errors import DatasetError

__all__ = ["CheckedImageFolder", "class_folders"]


def class_folders(directory: Path) -> list[str]:
    """The sorted names of the sub-folders of ``directory`` (ImageFolder's classes)."""
    return sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())


class CheckedImageFolder(ImageFolder):
    """An ImageFolder over ``root`` whose class indices follow ``classes`` (None: its own sub-folders).

    A sub-folder not in ``classes``, a folder without images, or an unreadable image is a DatasetError.
    """

    def __init__(self, root: Path, transform: object, classes: list[str] | None = None) -> None:
        self.fixed_classes = classes
        try:
            # a split may lack some of the train folder's classes, but not all its images (below)
            super().__init__(str(root), transform=transform, allow_empty=classes is not None)
        except FileNotFoundError as e:  # no class folders, or no images in them
            raise DatasetError(f"{root}: {e}; an image folder holds one sub-folder of images per class") from None
        if not self.samples:
            raise DatasetError(f"{root} holds no images in class sub-folders; put each class's images in root/<class>/")

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        if self.fixed_classes is None:
            return super().find_classes(directory)
        extra = sorted(set(class_folders(Path(directory))) - set(self.fixed_classes))
        if extra:
            raise DatasetError(
                f"{directory} has class folders the train split lacks ({', '.join(extra[:5])}): their labels "
                "would be meaningless; give both splits the same class folders"
            )
        return list(self.fixed_classes), {c: i for i, c in enumerate(self.fixed_classes)}

    def __getitem__(self, index: int) -> tuple[object, int]:
        try:
            return super().__getitem__(index)
        except OSError as e:  # PIL: an unidentified or truncated image
            raise DatasetError(f"cannot read image {self.samples[index][0]}: {e}; remove or replace it") from None
