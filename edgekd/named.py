"""Code named by "module:function" and imported when first used: how the bottom-layer tables (artifact kinds and
their runtimes, sinks such as the dashboard) name what lives above them without importing it."""

from __future__ import annotations

import importlib


def resolve(ref: str):
    module, _, function = ref.partition(":")
    return getattr(importlib.import_module(module), function)
