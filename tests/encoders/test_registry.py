"""The registry: validated entries, each with its own transforms (checked against timm)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from wsipipe.encoders import encoder_spec, get_entry, registry
from wsipipe.encoders.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderEntry,
    normalisation_label,
)
from wsipipe.errors import ConfigError

PATHOLOGY = (
    "uni", "uni2-h", "virchow2", "h-optimus-0", "h-optimus-1", "h0-mini", "prov-gigapath",
    "phikon-v2",
)  # fmt: skip


def test_registry_covers_the_issue_list() -> None:
    names = set(registry())
    assert set(PATHOLOGY) <= names
    assert {"efficientnet-lite0", "resnet18", "resnet50", "convnext_tiny",
            "vit_small_patch16_224"} <= names  # fmt: skip
    assert get_entry("UNI2-H") is get_entry("uni2-h")  # case-insensitive
    assert get_entry("resnet10t") is None  # plain timm names are not entries


def test_every_entry_has_its_own_transforms_and_provenance() -> None:
    for e in registry().values():
        assert e.verified, e.name
        if e.gated:
            assert e.access.startswith("https://huggingface.co/"), e.name
        if e.family == "pathology":
            assert e.weights_from == "hub" and e.hub_repo, e.name
    # models not trained with ImageNet statistics never get them
    hopt = get_entry("h-optimus-0")
    assert hopt is not None and hopt.mean == (0.707223, 0.578729, 0.703617)
    assert hopt.std == (0.211883, 0.230117, 0.177517)
    lite = get_entry("efficientnet-lite0")
    assert lite is not None and lite.mean == (127 / 255,) * 3 and lite.std == (128 / 255,) * 3
    gp = get_entry("prov-gigapath")
    assert gp is not None and gp.crop_pct == pytest.approx(224 / 256)
    assert gp.interpolation == "bicubic"


def test_timm_entries_match_timm_pretrained_cfg() -> None:
    """ImageNet entries carry exactly the transforms of the timm tag whose weights they load."""
    from timm.models import get_pretrained_cfg

    checked = 0
    for e in registry().values():
        if not (e.hub_repo or "").startswith("timm/"):
            continue
        cfg = get_pretrained_cfg(e.hub_repo.split("/", 1)[1])  # type: ignore[union-attr]
        assert cfg is not None and cfg.hf_hub_id == e.hub_repo, e.name
        assert tuple(cfg.mean) == e.mean and tuple(cfg.std) == e.std, e.name
        assert cfg.input_size[-1] == e.input_px, e.name
        assert cfg.interpolation == e.interpolation and cfg.crop_pct == e.crop_pct, e.name
        checked += 1
    assert checked >= 5


def test_entry_validation() -> None:
    good = dict(name="x", arch="resnet18", embed_dim=512, input_px=224, mean=IMAGENET_MEAN,
                std=IMAGENET_STD, mpp=0.5, licence="mit", verified="test",
                hub_repo="a/b")  # fmt: skip
    EncoderEntry(**good)  # type: ignore[arg-type]
    bad = [
        ({"name": "Bad Name"}, "name"),
        ({"std": (0.2, 0.0, 0.2)}, "std"),
        ({"mean": (120.0, 0.4, 0.4)}, "mean"),
        ({"mpp": 0.0}, "mpp"),
        ({"pooling": "max"}, "pooling"),
        ({"pooling": "stages"}, "stages"),  # stages pooling without its stages
        ({"stages": (2, 3)}, "stages"),  # stages given to another pooling
        ({"hub_repo": None}, "hub_repo"),
        ({"gated": True}, "access"),
        ({"verified": ""}, "verified"),
        ({"unverified": ("not_a_field",)}, "unverified"),
        ({"timm_kwargs": {"num_classes": 3}}, "timm_kwargs"),
        ({"timm_kwargs": {"mlp_layer": "Nope"}}, "mlp_layer"),
        ({"interpolation": "lanczos"}, "interpolation"),
        ({"crop_pct": 1.5}, "crop_pct"),
    ]
    for change, word in bad:
        with pytest.raises(ConfigError, match=word):
            EncoderEntry(**{**good, **change})  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        registry()["uni"].input_px = 256  # type: ignore[misc]


def test_to_dict_is_json_and_labels() -> None:
    data = json.loads(json.dumps([e.to_dict() for e in registry().values()]))
    v2 = next(d for d in data if d["name"] == "virchow2")
    assert v2["timm_kwargs"]["mlp_layer"] == "SwiGLUPacked" and v2["embed_dim"] == 2560
    assert v2["source"] == "hf-hub:paige-ai/Virchow2"
    assert normalisation_label(IMAGENET_MEAN, IMAGENET_STD) == "imagenet"
    assert normalisation_label((0.5,) * 3, (0.5,) * 3).startswith("inception")
    assert "0.707" in normalisation_label((0.707223, 0.578729, 0.703617), (0.2, 0.2, 0.2))


def test_encoder_spec() -> None:
    spec = encoder_spec("virchow2")
    assert (spec.embed_dim, spec.input_px, spec.pooling) == (2560, 224, "cls+mean")
    assert spec.registered and spec.mpp is None
    assert spec.to_dict()["weights_source"] == "hf-hub:paige-ai/Virchow2"
    plain = encoder_spec("vit_tiny_patch16_224")  # not registered: timm's own config
    assert not plain.registered and plain.embed_dim == 192 and plain.mean == (0.5, 0.5, 0.5)
    assert plain.weights_source == "hf-hub:timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    tv = encoder_spec("resnet18.tv_in1k")  # a timm tag picks that tag's transforms
    assert tv.interpolation == "bilinear" and tv.crop_pct == 0.875
    with pytest.raises(ConfigError, match="not_a_model"):
        encoder_spec("not_a_model")
