"""How store tiles meet the encoder: input size and resolution, resolved once per run.

A registered encoder was trained on tiles of ``input_px`` at ``mpp`` (e.g. 224 px at
0.5 um/px). Stores hold tiles of ``tile_px`` at ``target_mpp``. The rule:

* ``--input-px N`` given: tiles are resized to N px (their field of view is unchanged, so
  their um/px changes by tile_px / N).
* ``--input-px 0`` (default): tiles go in at their stored size when the encoder accepts any
  size (CNNs, ViTs with dynamic position embeddings); an encoder with a fixed input size
  gets them resized to that size.
* A store whose tile size or um/px differs from what the encoder was trained on gets one
  warning naming the fix (re-tile with ``--tile-px`` / ``--target-mpp``): the tiles are
  still used, because users may mean it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from wsipipe.errors import warn
from wsipipe.store import SlideSource
from wsipipe.train.config import TrainConfig

_MPP_TOLERANCE = 0.1  # relative difference of um/px that earns a warning


def fixed_input_px(name: str) -> int:
    """The input size a (registered or timm) encoder requires, 0 when it takes any size."""
    from wsipipe.encoders import get_entry
    from wsipipe.encoders.factory import encoder_spec

    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return 0
    spec = encoder_spec(name)
    entry = get_entry(name)
    transformer = any(k in spec.arch for k in ("vit", "swin", "deit", "beit", "eva"))
    dynamic = bool(entry.timm_kwargs.get("dynamic_img_size")) if entry is not None else False
    return spec.input_px if transformer and not dynamic else 0


def resolve_input(cfg: TrainConfig, sources: Sequence[SlideSource]) -> TrainConfig:
    """``cfg`` with ``input_px`` resolved for the encoder and these stores (see the module
    docstring); warns once about a tile size or um/px the encoder was not trained at."""
    from wsipipe.encoders.factory import encoder_spec

    if cfg.encoder.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return cfg  # its preprocessing is in the hub's config.json: timm applies it
    spec = encoder_spec(cfg.encoder)
    tile_sizes = sorted({s.tile_px for s in sources if s.tile_px})
    mpps = sorted({round(s.target_mpp, 4) for s in sources if s.target_mpp})
    input_px = cfg.input_px or fixed_input_px(cfg.encoder)
    seen = input_px or (tile_sizes[0] if len(tile_sizes) == 1 else 0)
    if spec.mpp is not None and seen and seen != spec.input_px:  # pathology encoders
        warn(
            f"encoder {cfg.encoder} was trained on {spec.input_px} px tiles, it gets {seen} px "
            f"ones; re-tile with --tile-px {spec.input_px} (or pass --input-px {spec.input_px})"
        )
    if spec.mpp is not None and mpps:
        far = [m for m in mpps if abs(m / spec.mpp - 1.0) > _MPP_TOLERANCE]
        if far:
            warn(
                f"encoder {cfg.encoder} was trained at {spec.mpp:g} um/px, the stores are at "
                f"{', '.join(f'{m:g}' for m in far)} um/px; re-tile with --target-mpp "
                f"{spec.mpp:g}"
            )
    return replace(cfg, input_px=input_px)
