"""Weights offline: --weights files and snapshot folders, the hub cache under HF_HUB_OFFLINE,
strict loading and the one-line errors. No network (see conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from wsipipe.encoders import create_encoder
from wsipipe.encoders import weights as W
from wsipipe.errors import ConfigError, EncoderWeightsError

from .conftest import HubWriter


def _imagenet_resnet18(seed: int = 1) -> dict[str, torch.Tensor]:
    """A timm-format ImageNet checkpoint (classifier included), distinct random values."""
    torch.manual_seed(seed)
    return timm.create_model("resnet18").state_dict()


def _same_weights(enc: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = enc.backbone.state_dict()
    assert set(own) == set(state) - {"fc.weight", "fc.bias"}
    for k, v in own.items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_file(tmp_path: Path, suffix: str) -> None:
    state = _imagenet_resnet18()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": {k: v for k, v in state.items()}}, path)  # wrapped checkpoint
    enc = create_encoder("resnet18", weights=str(path))
    _same_weights(enc, state)


def test_weights_snapshot_folder(tmp_path: Path) -> None:
    state = _imagenet_resnet18(seed=2)
    snap = tmp_path / "snapshot"
    snap.mkdir()
    torch.save(state, snap / "pytorch_model.bin")
    (snap / "config.json").write_text('{"architecture": "resnet18"}')
    _same_weights(create_encoder("resnet18", weights=snap), state)
    # plain (unregistered) timm names take --weights too
    torch.manual_seed(3)
    r10 = timm.create_model("resnet10t", num_classes=0).state_dict()
    save_file(r10, str(snap / "model.safetensors"))  # preferred over pytorch_model.bin
    enc = create_encoder("resnet10t", weights=snap)
    assert all(torch.equal(v, r10[k]) for k, v in enc.backbone.state_dict().items())


def test_hub_cache_found_offline(put_in_hub_cache: HubWriter, offline_hub: Path) -> None:
    """HF_HUB_OFFLINE=1 + a populated cache: pretrained weights load without any network."""
    state = _imagenet_resnet18(seed=4)
    put_in_hub_cache("timm/resnet18.a1_in1k", state, "model.safetensors")
    _same_weights(create_encoder("resnet18", pretrained=True), state)
    # a plain timm name resolves to timm's own hub id the same way
    torch.manual_seed(5)
    r10 = timm.create_model("resnet10t").state_dict()
    put_in_hub_cache("timm/resnet10t.c3_in1k", r10, "pytorch_model.bin")
    enc = create_encoder("resnet10t", pretrained=True)
    assert torch.equal(enc.backbone.conv1[0].weight, r10["conv1.0.weight"])


def test_hub_cache_repo_case(put_in_hub_cache: HubWriter, offline_hub: Path) -> None:
    """`hf download MahmoodLab/uni` leaves models--MahmoodLab--uni; the entry says UNI."""
    path = put_in_hub_cache("MahmoodLab/uni", {"x": torch.zeros(1)}, "pytorch_model.bin")
    assert W.find_in_cache("MahmoodLab/UNI", ("pytorch_model.bin",), offline_hub) == path
    assert W.find_in_cache("MahmoodLab/UNI", ("model.safetensors",), offline_hub) is None


def test_missing_gated_weights_fail_before_work(offline_hub: Path) -> None:
    with pytest.raises(EncoderWeightsError) as err:
        create_encoder("uni2-h", pretrained=True)  # 681M parameters: never built
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("encoder 'uni2-h'")
    assert str(offline_hub) in msg and "HF_HUB_OFFLINE=1" in msg
    assert "hf download MahmoodLab/UNI2-h" in msg and "--weights PATH" in msg
    assert "requesting access at https://huggingface.co/MahmoodLab/UNI2-h" in msg
    assert isinstance(err.value, ConfigError)  # the CLI prints it as one line, exit 2


def test_missing_open_weights_message_has_no_gate_note() -> None:
    with pytest.raises(EncoderWeightsError) as err:
        create_encoder("resnet50", pretrained=True)
    msg = str(err.value)
    assert "timm/resnet50.a1_in1k" in msg and "request access" not in msg


def test_gated_download_error(monkeypatch: pytest.MonkeyPatch, offline_hub: Path) -> None:
    """Online, a gated repo without access says how to get it (the hub's answer simulated:
    the real one needs the network)."""
    import huggingface_hub
    from huggingface_hub.errors import GatedRepoError

    def gated(*args: object, **kwargs: object) -> str:
        err = GatedRepoError.__new__(GatedRepoError)  # its __init__ wants an HTTP response
        Exception.__init__(err, "403 gated")
        raise err

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", gated)
    with pytest.raises(EncoderWeightsError, match=r"gated .* request access at https://hugging"):
        create_encoder("virchow2", pretrained=True)


def test_wrong_weights_are_rejected(tmp_path: Path) -> None:
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0).state_dict()
    path = tmp_path / "vit.pth"
    torch.save(vit, path)
    with pytest.raises(EncoderWeightsError, match=r"do not fit .* missing .* unexpected") as err:
        create_encoder("resnet18", weights=path)
    assert "\n" not in str(err.value)
    partial = {k: v for k, v in _imagenet_resnet18().items() if not k.startswith("layer4")}
    torch.save(partial, path)
    with pytest.raises(EncoderWeightsError, match=r"missing \(layer4"):
        create_encoder("resnet18", weights=path)
    bad = _imagenet_resnet18()
    bad["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(bad, path)
    with pytest.raises(EncoderWeightsError, match="another shape"):
        create_encoder("resnet18", weights=path)


def test_bad_weights_paths(tmp_path: Path) -> None:
    with pytest.raises(EncoderWeightsError, match="does not exist"):
        create_encoder("resnet18", weights=tmp_path / "nope.pth")
    with pytest.raises(EncoderWeightsError, match=r"folder without model\.safetensors"):
        create_encoder("resnet18", weights=tmp_path)
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(EncoderWeightsError, match="unknown file type"):
        create_encoder("resnet18", weights=tmp_path / "w.txt")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderWeightsError, match="cannot read weights"):
        create_encoder("resnet18", weights=tmp_path / "junk.pth")
    torch.save({"epoch": 3}, tmp_path / "meta.pth")
    with pytest.raises(EncoderWeightsError, match="no state dict"):
        create_encoder("resnet18", weights=tmp_path / "meta.pth")


def test_strip_prefixes_and_env() -> None:
    state = {"module.a": torch.zeros(1), "b": torch.ones(1)}
    assert set(W.strip_prefixes(state, ("module.", "backbone."))) == {"a", "b"}


def test_hub_cache_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert W.hub_cache_dir() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    assert W.hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert not W.hub_offline()
