"""Patch encoders by name: a registry of ImageNet and pathology foundation models, offline
weight resolution (``--weights``, the hub cache, ``HF_HUB_OFFLINE``) and one factory.

``create_encoder(name, pretrained=..., weights=...)`` -> :class:`wsipipe.models.PatchEncoder`;
``encoder_spec(name)`` -> the input size, normalisation, µm/px and width a loader needs.
"""

from typing import Any

from wsipipe.encoders.registry import EncoderEntry, get_entry, registry

_FACTORY = ("EncoderSpec", "create_encoder", "encoder_spec")


def __getattr__(name: str) -> Any:
    """The factory imports torch and timm: only when it is used (``wsipipe --help`` stays
    fast)."""
    if name in _FACTORY:
        from wsipipe.encoders import factory

        return getattr(factory, name)
    raise AttributeError(f"module 'wsipipe.encoders' has no attribute {name!r}")


__all__ = [
    "EncoderEntry",
    "EncoderSpec",
    "create_encoder",
    "encoder_spec",
    "get_entry",
    "registry",
]
