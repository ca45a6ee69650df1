"""Patch encoders by name: a registry of ImageNet and pathology foundation models, offline
weight resolution (``--weights``, the hub cache, ``HF_HUB_OFFLINE``) and one factory.

``create_encoder(name, pretrained=..., weights=...)`` -> :class:`wsipipe.models.PatchEncoder`;
``encoder_spec(name)`` -> the input size, normalisation, µm/px and width a loader needs.
"""

from wsipipe.encoders.factory import EncoderSpec, create_encoder, encoder_spec
from wsipipe.encoders.registry import EncoderEntry, get_entry, registry

__all__ = [
    "EncoderEntry",
    "EncoderSpec",
    "create_encoder",
    "encoder_spec",
    "get_entry",
    "registry",
]
