"""One registry of model families. A family is one module that decorates its class with @register."""

from __future__ import annotations

from typing import Callable

from edgekd.errors import EdgekdError

_MODELS: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    def add(cls: type) -> type:
        if name in _MODELS:
            raise RuntimeError(f"model '{name}' registered twice")
        cls.family = name
        _MODELS[name] = cls
        return cls
    return add


def model_class(name: str) -> type:
    if name not in _MODELS:
        raise EdgekdError(f"unknown model '{name}': available models are {', '.join(sorted(_MODELS))}")
    return _MODELS[name]


def available_models() -> list[str]:
    return sorted(_MODELS)
