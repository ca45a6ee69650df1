"""How store tiles meet the encoder: input size resolved once, warnings for a tile size or
um/px a pathology encoder was not trained at."""

from __future__ import annotations

from dataclasses import replace

import pytest

from wsipipe.store import SlideSource
from wsipipe.train.config import TrainConfig
from wsipipe.train.encoding import fixed_input_px, resolve_input


def _sources(px: int, mpp: float) -> list[SlideSource]:
    return [SlideSource(f"s{i}", "store", f"/x/s{i}.h5", 10, tile_px=px, target_mpp=mpp)
            for i in range(2)]  # fmt: skip


def test_any_size_encoders_take_the_stored_tiles(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = resolve_input(TrainConfig(encoder="resnet18"), _sources(256, 0.5))
    assert cfg.input_px == 0 and fixed_input_px("resnet18") == 0
    assert capsys.readouterr().err == ""  # ImageNet encoders: no tiling advice


def test_fixed_size_encoders_get_their_size() -> None:
    assert fixed_input_px("vit_small_patch16_224") == 224
    cfg = resolve_input(TrainConfig(encoder="vit_small_patch16_224"), _sources(256, 0.5))
    assert cfg.input_px == 224
    explicit = replace(TrainConfig(encoder="vit_small_patch16_224"), input_px=192)
    assert resolve_input(explicit, _sources(256, 0.5)).input_px == 192


def test_pathology_encoder_warns_about_tile_size_and_mpp(capsys) -> None:
    cfg = resolve_input(TrainConfig(encoder="uni"), _sources(256, 1.0))  # trained 224 @ 0.5
    err = capsys.readouterr().err
    assert cfg.input_px == 0  # dynamic position embeddings: tiles go in as stored
    assert "trained on 224 px tiles, it gets 256 px" in err and "--tile-px 224" in err
    assert "trained at 0.5 um/px, the stores are at 1 um/px" in err and "--target-mpp 0.5" in err
    resolve_input(TrainConfig(encoder="uni"), _sources(224, 0.5))
    assert capsys.readouterr().err == ""
