"""The classes of a segmentation model: name, label value and colour, as the backend reports them."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any


class ClassTableError(ValueError):
    """Classes that cannot name a label map (missing, duplicated or background values)."""


@dataclasses.dataclass(frozen=True)
class LabelClass:
    """One foreground class: its name, its value in label maps and its colour (RGB in 0-1)."""

    name: str
    value: int
    color: tuple[float, float, float]

    @classmethod
    def fromDict(cls, data: dict[str, Any]) -> LabelClass:
        """A class from its protocol form ``{"name", "value", "color"}`` (``model.json``, ``result`` events)."""
        red, green, blue = (float(c) for c in data["color"])
        return cls(str(data["name"]), int(data["value"]), (red, green, blue))


def classesFromResult(result: dict[str, Any]) -> list[LabelClass]:
    """The classes in a ``segment`` result event."""
    try:
        classes = [LabelClass.fromDict(entry) for entry in result["classes"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ClassTableError(
            f"the backend's result does not list the model's classes ({type(exc).__name__}: {exc}); update voco-backend"
        ) from exc
    checkClasses(classes, "the model")
    return classes


def checkClasses(classes: Sequence[LabelClass], source: str) -> None:
    """Raise unless the classes are non-empty with distinct names and distinct values above 0."""
    values = [c.value for c in classes]
    names = [c.name for c in classes]
    if not classes or min(values) < 1 or len(set(values)) != len(values) or len(set(names)) != len(names):
        listed = ", ".join(f"{c.value} {c.name}" for c in classes) or "none"
        raise ClassTableError(
            f"{source}: classes must be non-empty with distinct names and distinct label values above 0, got {listed}"
        )
