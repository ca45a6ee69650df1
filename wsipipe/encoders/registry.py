"""The encoder registry: one validated, frozen record per encoder users can name.

An :class:`EncoderEntry` holds everything needed to rebuild an encoder *offline* (the timm
architecture and the exact keyword arguments), where its pretrained weights live, and the
preprocessing its authors trained it with (input size, mean/std, interpolation, µm/px). The
entries themselves are in :mod:`wsipipe.encoders.catalog`; each names the source it was
checked against (``verified``) and lists the fields that could not be checked (``unverified``).

Layer classes in ``timm_kwargs`` are written as names (``"SwiGLUPacked"``, ``"SiLU"``) so the
registry imports neither torch nor timm and prints as JSON; :func:`resolve_kwargs` turns them
into classes when the architecture is built.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from wsipipe.errors import ConfigError

Pooling = Literal["model", "cls", "cls+mean", "stages"]
WeightsFrom = Literal["hub", "package", "none"]
Family = Literal["pathology", "imagenet"]

POOLINGS: tuple[str, ...] = ("model", "cls", "cls+mean", "stages")
INTERPOLATIONS: tuple[str, ...] = ("bilinear", "bicubic", "nearest")
# layer classes allowed in timm_kwargs, by the name the registry writes them with
LAYER_NAMES: tuple[str, ...] = ("SwiGLUPacked", "SiLU", "GELU")
KEY_MAP_NAMES: tuple[str, ...] = ("efficientnet-lite", "hf-dinov2")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


@dataclass(frozen=True)
class EncoderEntry:
    """One encoder users can name (``wsipipe encoders`` lists them).

    Attributes:
        name: what users type (``uni2-h``, ``resnet50``).
        arch: timm architecture built offline with ``timm.create_model(arch, **timm_kwargs)``.
        timm_kwargs: the exact keyword arguments that give the authors' architecture.
        embed_dim: width of the embedding the encoder returns (after ``pooling``).
        input_px: tile side the model was trained on (px), at ``mpp``.
        mean, std: per-channel normalisation of [0, 1] RGB.
        interpolation: resampling the authors use to bring an image to ``input_px``.
        crop_pct: the authors' centre crop (``input_px / resize_px``; 1.0 = no crop).
        mpp: µm/px the model was trained at (None: unknown or mixed magnifications).
        pooling: ``model`` (the timm model's own pooled output), ``cls`` (class token),
            ``cls+mean`` (class token concatenated with the mean of the patch tokens, register
            tokens excluded) or ``stages`` (global averages of the CNN stages ``stages``).
        stages: for ``stages`` pooling, indices into the CNN's ``feature_info``.
        weights_from: ``hub`` (a Hugging Face repo, ``hub_repo``), ``package`` (weights shipped
            in a Python package, ``package``) or ``none``.
        hub_repo: Hugging Face repo id of the weights (for ``hub``).
        weight_files: files looked for in a hub snapshot / local folder, in order.
        package: distribution that ships the weights (for ``package``).
        strip_prefixes: key prefixes removed from the authors' state dict before loading.
        key_map: name of a converter from the authors' key layout to timm's
            (:data:`wsipipe.encoders.weights.KEY_MAPS`), applied when a state dict is in it.
        licence, gated, access: licence, whether the hub repo is gated, where to ask for access.
        verified: the sources each field was checked against.
        unverified: fields that could not be checked against a first-hand source.
    """

    name: str
    arch: str
    embed_dim: int
    input_px: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    mpp: float | None
    licence: str
    verified: str
    family: Family = "pathology"
    timm_kwargs: Mapping[str, Any] = field(default_factory=dict)
    interpolation: str = "bicubic"
    crop_pct: float = 1.0
    pooling: Pooling = "model"
    stages: tuple[int, ...] = ()
    weights_from: WeightsFrom = "hub"
    hub_repo: str | None = None
    weight_files: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
    package: str | None = None
    strip_prefixes: tuple[str, ...] = ()
    key_map: str | None = None
    gated: bool = False
    access: str = ""
    unverified: tuple[str, ...] = ()
    notes: str = ""

    def __post_init__(self) -> None:
        def bad(what: str, value: object, fix: str) -> ConfigError:
            return ConfigError(f"encoder registry entry {self.name!r}: {what}={value!r} {fix}")

        if not _NAME.match(self.name):
            raise bad("name", self.name, "must be lower-case letters, digits, '.', '_', '-'")
        if not self.arch:
            raise bad("arch", self.arch, "must name a timm architecture")
        if self.embed_dim < 1 or self.input_px < 8:
            raise bad("embed_dim/input_px", (self.embed_dim, self.input_px), "must be >= 1 / >= 8")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise bad("mean/std", (self.mean, self.std), "must hold 3 values each, std > 0")
        if not all(0.0 <= m <= 1.0 for m in self.mean):
            raise bad("mean", self.mean, "must be in [0, 1] (normalisation of [0, 1] RGB)")
        if self.mpp is not None and not 0 < self.mpp < 100:
            raise bad("mpp", self.mpp, "must be a µm/px value in (0, 100) or None")
        if self.interpolation not in INTERPOLATIONS:
            raise bad("interpolation", self.interpolation, f"must be one of {INTERPOLATIONS}")
        if not 0 < self.crop_pct <= 1:
            raise bad("crop_pct", self.crop_pct, "must be in (0, 1]")
        if self.pooling not in POOLINGS:
            raise bad("pooling", self.pooling, f"must be one of {POOLINGS}")
        if (self.pooling == "stages") != bool(self.stages):
            raise bad("stages", self.stages, "must be given exactly when pooling='stages'")
        if self.weights_from == "hub" and not (self.hub_repo and "/" in self.hub_repo):
            raise bad("hub_repo", self.hub_repo, "must be an 'org/name' repo for hub weights")
        if self.weights_from == "package" and not self.package:
            raise bad("package", self.package, "must name the distribution shipping the weights")
        if self.key_map is not None and self.key_map not in KEY_MAP_NAMES:
            raise bad("key_map", self.key_map, f"must be one of {KEY_MAP_NAMES}")
        if self.gated and not self.access:
            raise bad("access", self.access, "must say how to request access to a gated model")
        if not self.verified:
            raise bad("verified", self.verified, "must name the source the entry was checked on")
        fields = {f.name for f in dataclasses.fields(self)}
        unknown = [u for u in self.unverified if u not in fields]
        if unknown:
            raise bad("unverified", unknown, f"must name fields of the entry ({sorted(fields)})")
        for key, value in self.timm_kwargs.items():
            if key in ("num_classes", "pretrained"):
                raise bad("timm_kwargs", key, "is set by the factory, not the entry")
            if isinstance(value, str) and key.endswith("_layer") and value not in LAYER_NAMES:
                raise bad(f"timm_kwargs[{key}]", value, f"must be one of {LAYER_NAMES}")

    @property
    def source(self) -> str:
        """Where the weights come from, as the table prints it."""
        if self.weights_from == "hub":
            return f"hf-hub:{self.hub_repo}"
        if self.weights_from == "package":
            return f"pip:{self.package}"
        return "random init only"

    @property
    def normalisation(self) -> str:
        return normalisation_label(self.mean, self.std)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record (``wsipipe encoders --json``)."""
        data = dataclasses.asdict(self)
        data["timm_kwargs"] = dict(self.timm_kwargs)
        data["source"] = self.source
        data["normalisation"] = self.normalisation
        return data


def normalisation_label(mean: tuple[float, ...], std: tuple[float, ...]) -> str:
    """``imagenet`` / ``inception`` / ``mean=(..) std=(..)`` for the encoders table."""

    def close(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
        return len(a) == len(b) and all(abs(x - y) < 5e-4 for x, y in zip(a, b, strict=True))

    if close(mean, IMAGENET_MEAN) and close(std, IMAGENET_STD):
        return "imagenet"
    if close(mean, INCEPTION_MEAN) and close(std, INCEPTION_STD):
        return "inception (0.5/0.5)"
    fmt = ",".join
    return f"mean=({fmt(f'{m:.3f}' for m in mean)}) std=({fmt(f'{s:.3f}' for s in std)})"


def resolve_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``timm_kwargs`` with layer names replaced by the classes timm expects."""
    import torch
    from timm.layers import SwiGLUPacked

    layers: dict[str, Any] = {"SwiGLUPacked": SwiGLUPacked, "SiLU": torch.nn.SiLU,
                              "GELU": torch.nn.GELU}  # fmt: skip
    return {
        k: layers[v] if isinstance(v, str) and k.endswith("_layer") else v
        for k, v in kwargs.items()
    }


def registry() -> dict[str, EncoderEntry]:
    """All registered encoders by name (the catalog, validated once on import)."""
    from wsipipe.encoders.catalog import ENTRIES

    return {e.name: e for e in ENTRIES}


def get_entry(name: str) -> EncoderEntry | None:
    """The registry entry of ``name`` (case-insensitive), or None for a plain timm name."""
    return registry().get(name.lower())
