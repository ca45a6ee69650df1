"""``CohortConfig``: what ``wsipipe synth`` generates (a plain dataclass, no heavy imports)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from wsipipe.cli_config import opt
from wsipipe.errors import ConfigError

#: share of a positive slide's tissue covered by tumour: small CAMELYON-like foci
DEFAULT_TUMOUR_FRACTION = (0.05, 0.16)


@dataclass(frozen=True)
class CohortConfig:
    """What :func:`generate_cohort` makes. Sizes in level-0 px, ``mpp`` in um/px."""

    n_slides: int = opt(12, "Number of slides", shown="12; real texture 32")
    width: int = opt(6144, "Level-0 width, px", shown="6144; real texture 4096")
    height: int = opt(4608, "Level-0 height, px", shown="4608; real texture 3072")
    mpp: float = opt(0.5, "Microns per pixel written into the slides")
    positive_fraction: float = opt(0.5, "Fraction of slides with tumour")
    seed: int = opt(0, "Random seed")
    pen_fraction: float = opt(0.5, "Fraction of slides with pen strokes (synthetic texture)")
    splits: tuple[float, float, float] = opt(
        (0.5, 0.25, 0.25), "train/val/test fractions, stratified", cli=False
    )
    # the default gives small CAMELYON-like foci, (0.15, 0.35) macro-metastases
    tumour_fraction: tuple[float, float] = opt(
        DEFAULT_TUMOUR_FRACTION, "Share LOW,HIGH of a positive slide's tissue that is tumour, "
        "drawn per slide (0.15,0.35 gives macro-metastases)",
        shown="0.05,0.16; real texture 0.004,0.09",
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.n_slides < 1:
            raise ConfigError(f"CohortConfig.n_slides={self.n_slides} must be >= 1")
        if self.width < 512 or self.height < 512:
            raise ConfigError(
                f"CohortConfig size {self.width}x{self.height} is too small; use >= 512x512 px"
            )
        if not (math.isfinite(self.mpp) and 0.05 <= self.mpp <= 10.0):
            raise ConfigError(f"CohortConfig.mpp={self.mpp!r} must be in 0.05..10 um/px")
        for name in ("positive_fraction", "pen_fraction"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0.0 <= v <= 1.0):
                raise ConfigError(f"CohortConfig.{name}={v!r} must be in 0..1")
        if len(self.splits) != 3 or any(not (math.isfinite(f) and f >= 0) for f in self.splits):
            raise ConfigError(
                f"CohortConfig.splits={self.splits!r} must be 3 non-negative fractions"
            )
        if abs(sum(self.splits) - 1.0) > 1e-6:
            raise ConfigError(
                f"CohortConfig.splits={self.splits!r} must sum to 1 (train, val, test)"
            )
        tf = tuple(self.tumour_fraction)
        if not (len(tf) == 2 and all(math.isfinite(v) for v in tf) and 0.0 < tf[0] <= tf[1] < 1):
            raise ConfigError(
                f"CohortConfig.tumour_fraction={self.tumour_fraction!r} must be two fractions "
                "0 < low <= high < 1, e.g. (0.05, 0.16)"
            )
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"CohortConfig.seed={self.seed} must be in 0..2**32-1")
