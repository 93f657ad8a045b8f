"""Settings dataclasses ↔ JSON (config.json of runs, task configs): one way to write them and
one strict way to read them back."""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, Iterable, TypeVar

T = TypeVar("T")


def json_ready(config: Any) -> dict[str, Any]:
    """A dataclass as a dict with tuples as lists, so a saved config compares equal to a live one."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


def reject_unknown(data: dict[str, Any], known: Iterable[str], what: str) -> None:
    """Raise ValueError naming the keys of ``data`` that are not ``known`` ``what`` settings."""
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown {what} settings: {sorted(unknown)}")


def from_checked_dict(cls: type[T], data: dict[str, Any], what: str) -> T:
    """``cls(**data)`` after refusing keys that are not fields of ``cls``."""
    reject_unknown(data, (f.name for f in fields(cls)), what)
    return cls(**data)
