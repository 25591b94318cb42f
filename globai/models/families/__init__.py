"""The model-family registry: one module per family in this package, each defining `FAMILY`.

Adding a family = one new module here (its name is the family's name, as manifests spell it) + its
exact-match test (`tests/models/test_models_families.py` parametrises over every family found here).
Family modules import transformers; this module does not, so a manifest can check a family name cheaply.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from globai.models.errors import UnsupportedModelError
from globai.models.families._names import family_names

if TYPE_CHECKING:
    from globai.models.families._base import ModelFamily


def get_family(name: str) -> ModelFamily:
    if name not in family_names():
        raise UnsupportedModelError(f"family {name!r} (known: {', '.join(family_names())})")
    family: ModelFamily = importlib.import_module(f"{__name__}.{name}").FAMILY
    return family


def family_for_model_type(model_type: str) -> ModelFamily:
    """The family that imports checkpoints whose `config.json` says `model_type`."""
    for name in family_names():
        family = get_family(name)
        if model_type in family.model_types:
            return family
    known = sorted(t for n in family_names() for t in get_family(n).model_types)
    raise UnsupportedModelError(f"model_type {model_type!r} (supported: {', '.join(known)})")


__all__ = ["family_for_model_type", "family_names", "get_family"]
