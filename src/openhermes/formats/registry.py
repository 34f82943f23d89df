"""Name -> prompt format module."""

from __future__ import annotations

from types import ModuleType

from openhermes.formats import alpaca, chatml, limarp

FORMATS: dict[str, ModuleType] = {"chatml": chatml, "limarp": limarp, "alpaca": alpaca}


def get_format(name: str) -> ModuleType:
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown prompt format {name!r}; choose one of {', '.join(FORMATS)}") from None
