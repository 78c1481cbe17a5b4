"""Methods registered by name, timm-style: ``create_model("dafh", backbone=..., bits=32, ...)``.

A method is a model builder plus the criterion that trains it; keeping both under one name
is what lets the CLI, the training loop and the benchmark treat every method alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from shared.hashing.models.base import HashModel

__all__ = ["MethodSpec", "register_method", "create_model", "create_criterion", "list_models", "resolve_name"]


@dataclass(frozen=True)
class MethodSpec:
    name: str
    build: Callable[..., HashModel]
    criterion: Callable[..., Any]
    default_backbone: str
    aliases: tuple[str, ...] = ()


_METHODS: dict[str, MethodSpec] = {}
_ALIASES: dict[str, str] = {}


def register_method(
    name: str, *, criterion: Callable[..., Any], default_backbone: str, aliases: tuple[str, ...] = ()
) -> Callable[[Callable[..., HashModel]], Callable[..., HashModel]]:
    """Decorator for a builder ``(backbone, bits, num_classes, image_size, pretrained, **kw)``.

    ``criterion`` is called as ``criterion(bits=..., num_classes=..., **kw)``.
    """

    def deco(build: Callable[..., HashModel]) -> Callable[..., HashModel]:
        if name in _METHODS:
            raise ValueError(f"method {name!r} registered twice")
        _METHODS[name] = MethodSpec(name, build, criterion, default_backbone, aliases)
        for alias in (name, *aliases):
            _ALIASES[alias] = name
        return build

    return deco


def resolve_name(name: str) -> str:
    """Canonical method name for a name or alias (case-insensitive, '-' == '_')."""
    key = name.lower().replace("-", "_")
    if key not in _ALIASES:
        raise KeyError(f"unknown method {name!r}; available: {', '.join(list_models())}")
    return _ALIASES[key]


def list_models() -> list[str]:
    return sorted(_METHODS)


def create_model(
    name: str,
    backbone: str | None = None,
    bits: int = 32,
    num_classes: int = 2,
    image_size: int = 224,
    pretrained: bool = False,
    **kwargs: Any,
) -> HashModel:
    """Build a method's model. ``pretrained`` defaults to False: no code path needs network.

    The returned model carries ``model.config``, the exact arguments that rebuild it, which
    the checkpoint stores.
    """
    spec = _METHODS[resolve_name(name)]
    backbone = backbone or spec.default_backbone
    model = spec.build(backbone=backbone, bits=bits, num_classes=num_classes, image_size=image_size,
                       pretrained=pretrained, **kwargs)
    model.method = spec.name
    model.config = {"method": spec.name, "backbone": backbone, "bits": bits, "num_classes": num_classes,
                    "image_size": image_size, "model_kwargs": dict(kwargs)}
    return model


def create_criterion(name: str, bits: int, num_classes: int, **kwargs: Any) -> Any:
    """The loss object that trains method ``name``."""
    return _METHODS[resolve_name(name)].criterion(bits=bits, num_classes=num_classes, **kwargs)
