"""Dataclasses as plain dicts and back: the one ``to_dict`` / ``from_dict`` that every config shares.

A config dataclass that derives from :class:`DictConfig` (``CodecConfig``, ``DiscriminatorConfig``,
``ReconstructionLossConfig``, the training ``Lineage``) is stored in checkpoints, YAML and JSON as a plain dict
(:func:`plain`: tuples become lists) and rebuilt from one with its defaults for missing keys and a one-line
``ValueError`` naming any unknown key.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, ClassVar, TypeVar

T = TypeVar("T", bound="DictConfig")


def plain(tree: Any) -> Any:
    """``tree`` with every tuple turned into a list, recursively (plain YAML / JSON); other values unchanged."""
    if isinstance(tree, dict):
        return {k: plain(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [plain(v) for v in tree]
    return tree


class DictConfig:
    """Mixin for a config dataclass: :meth:`to_dict` (plain, field order) and :meth:`from_dict` (its inverse).

    Class attributes: ``dict_name`` names the config in error messages (``unknown codec config key(s): ...``);
    ``ignore_unknown_keys`` makes :meth:`from_dict` drop keys it does not know instead of refusing them (for
    records written by other versions, such as a checkpoint's lineage).
    """

    dict_name: ClassVar[str] = "config"
    ignore_unknown_keys: ClassVar[bool] = False

    def to_dict(self) -> dict[str, Any]:
        """Every field, in declaration order, as plain values (tuples -> lists)."""
        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        """Inverse of :meth:`to_dict`. Missing keys take their defaults; unknown keys raise a ``ValueError`` naming
        them (unless ``ignore_unknown_keys``); the values are copied, never shared with ``data``."""
        if not isinstance(data, dict):
            raise ValueError(f"{cls.dict_name} must be a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown and not cls.ignore_unknown_keys:
            raise ValueError(f"unknown {cls.dict_name} key(s): {', '.join(map(str, unknown))}; "
                             f"valid keys: {', '.join(sorted(known))}")
        return cls(**{k: copy.deepcopy(v) for k, v in data.items() if k in known})
