"""What the GPU benchmark runs: sizes, encoders and time boxes of the full run and of the
CPU smoke run (pure data, no I/O), and the cases of each part in priority order."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

PRESET = "camelyon16-e2e"  # M, I, S, encoder, batch, channels_last, checkpointing
# the smoke run's encoders: timm's test models (~0.4 M parameters; 160 px input for the ViT)
TINY_CNN = "test_resnet.r160_in1k"
TINY_VIT = "test_vit.r160_in1k"


@dataclass(frozen=True)
class Settings:
    smoke: bool
    budget_s: float  # the whole run, data preparation included
    shares: dict[str, float]  # part -> share of what is left after preparing the data
    case_cap_s: float  # one case (one training step, one scan variant) at most
    tile_px: int  # tiles of the end-to-end and ResNet scan stores (the preset's 256)
    e2e_ns: tuple[int, ...]  # N of the big slide of the batch, priority order
    small_n: int  # tiles of each of the batch's other slides
    batch: int  # slides per optimiser step (the preset's 16 in the full run)
    e2e_encoder: str
    workers: int  # DataLoader workers decoding JPEG
    scan_encoders: tuple[str, ...]
    scan_n: dict[str, int]  # encoder -> tiles of the scanned slide
    scan_workers: tuple[int, ...]
    warm_n: int  # tiles of the slide scanned just before the timed one (workers in step)
    reps: int  # timed repetitions of each scan variant (best kept)
    features_n: int  # tiles (feature rows) per slide in features mode
    features_dim: int  # F of the cache (ResNet-50 pooled features: 2048)
    features_batch: int
    tiles: str = ""  # --tiles: a folder of real .jpg tiles (default: shared/data/real/tiles)

    def with_budget(self, budget_s: float) -> Settings:
        """The same run in ``budget_s`` seconds: the per-case cap scales along."""
        cap = self.case_cap_s * budget_s / self.budget_s
        return replace(self, budget_s=budget_s, case_cap_s=cap)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Settings:
        d = json.loads(text)
        for key in ("e2e_ns", "scan_encoders", "scan_workers"):
            d[key] = tuple(d[key])
        return cls(**d)


def full_settings(budget_s: float = 330.0) -> Settings:
    """One H100 / H200 with 16 cores: the issue's sizes in at most 6 minutes."""
    cores = os.cpu_count() or 16
    return Settings(
        smoke=False,
        budget_s=budget_s,
        shares={"e2e": 0.48, "scan": 0.26, "features": 0.12, "tests": 0.14},
        case_cap_s=100.0,
        tile_px=256,
        e2e_ns=(10_000, 250_000, 50_000),
        small_n=500,
        batch=16,
        e2e_encoder="resnet50",
        workers=max(1, min(cores - 2, 14)),
        scan_encoders=("resnet50", "vit_base_patch16_224"),
        scan_n={"resnet50": 10_000, "vit_base_patch16_224": 4_096},
        scan_workers=tuple(sorted({min(8, cores), max(1, min(cores - 2, 14))})),
        warm_n=512,
        reps=2,
        features_n=10_000,
        features_dim=2048,
        features_batch=16,
    )


def smoke_settings(budget_s: float = 150.0) -> Settings:
    """Every part at tiny sizes on the CPU (2 cores): proves the script end to end."""
    return Settings(
        smoke=True,
        budget_s=budget_s,
        shares={"e2e": 0.4, "scan": 0.3, "features": 0.15, "tests": 0.15},
        case_cap_s=40.0,
        tile_px=64,
        e2e_ns=(200, 400, 300),
        small_n=40,
        batch=2,
        e2e_encoder=TINY_CNN,
        workers=1,
        scan_encoders=(TINY_CNN, TINY_VIT),
        scan_n={TINY_CNN: 300, TINY_VIT: 96},
        scan_workers=(1,),
        warm_n=32,
        reps=1,
        features_n=300,
        features_dim=256,
        features_batch=2,
    )


# ---- cases, in priority order (the part stops where its time box ends) --------------------
def e2e_cases(s: Settings) -> list[dict[str, Any]]:
    """IPS and DBPS with checkpointing at the first two N (the smallest and the headline
    250k), without checkpointing at the first N (the gradient pass does not depend on N),
    then the remaining N."""
    first, *rest = s.e2e_ns
    out = [{"method": m, "n": first, "ckpt": True} for m in ("ips", "dbps")]
    if rest:
        out += [{"method": m, "n": rest[0], "ckpt": True} for m in ("ips", "dbps")]
    out += [{"method": m, "n": first, "ckpt": False} for m in ("ips", "dbps")]
    for n in rest[1:]:
        out += [{"method": m, "n": n, "ckpt": True} for m in ("ips", "dbps")]
    return out


def scan_cases(s: Settings) -> list[dict[str, Any]]:
    return [{"encoder": e, "n": s.scan_n[e]} for e in s.scan_encoders]


def features_cases(s: Settings) -> list[dict[str, Any]]:
    """The papers' CAMELYON16 settings in features mode, as shipped in the presets (IPS:
    M = I = 5000; DBPS: M = 100, I = 500, S = 400; batch 16)."""
    return [{"preset": "camelyon16-ips"}, {"preset": "camelyon16-dbps"}]


def case_key(part: str, case: dict[str, Any]) -> str:
    return part + ":" + ",".join(f"{k}={v}" for k, v in case.items())


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]
