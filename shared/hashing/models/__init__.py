"""Hash models, registered by name: ``create_model("dafh", backbone="efficientnet_b0", bits=32, ...)``.

Importing the package registers every method (dafh, saliency_fusion, hashnet, dsh, dpsh, dpn).
"""
from shared.hashing.models import baselines, dafh, saliency_fusion  # noqa: F401  (register methods)
from shared.hashing.models.base import (
           HashHead,
           HashModel,
           HashOutput,
           TimmBackbone,
           pack_codes,
)
from shared.hashing.models.registry import (
           create_criterion,
           create_model,
           list_models,
           resolve_name,
)

__all__ = ["HashHead", "HashModel", "HashOutput", "TimmBackbone", "pack_codes", "create_criterion",
           "create_model", "list_models", "resolve_name"]
