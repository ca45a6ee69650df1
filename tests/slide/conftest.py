"""Generated Aperio-like slides shared by the slide tests (written once per session)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsipipe.testing.slides import synthetic_rgb, write_aperio_like

# Level 0 has partial edge tiles on the right (1296 = 5*256 + 16) and at the bottom
# (1008 = 3*256 + 240); both sizes divide by 16, so levels at 4x and 16x are exact.
WIDTH, HEIGHT = 1296, 1008


@pytest.fixture(scope="session")
def image() -> np.ndarray:
    return synthetic_rgb(WIDTH, HEIGHT, seed=1)


@pytest.fixture(scope="session")
def slides_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("slides")


@pytest.fixture(scope="session")
def aperio_rgb(slides_dir: Path, image: np.ndarray) -> Path:
    """Real-Aperio-like: RGB-coded JPEG, shared JPEGTables, mpp 0.5, levels 1 and 4."""
    return write_aperio_like(slides_dir / "rgb.svs", image, mpp=0.5, jpeg="rgb")


@pytest.fixture(scope="session")
def aperio_ycbcr(slides_dir: Path, image: np.ndarray) -> Path:
    """tifffile's YCbCr 4:2:0 JPEG with JFIF headers, mpp 0.5, levels 1 and 4."""
    return write_aperio_like(slides_dir / "ycbcr.svs", image, mpp=0.5, jpeg="ycbcr")


@pytest.fixture(scope="session")
def fine_slide(slides_dir: Path, image: np.ndarray) -> Path:
    """mpp 0.25 with levels 1, 4, 16 and 128 px file tiles (for resampling/multi-tile)."""
    return write_aperio_like(
        slides_dir / "fine.svs", image, mpp=0.25, app_mag=40, tile=128, downsamples=(1, 4, 16)
    )


@pytest.fixture(scope="session")
def no_mpp_slide(slides_dir: Path, image: np.ndarray) -> Path:
    return write_aperio_like(slides_dir / "nompp.svs", image[:512, :512], mpp=None, app_mag=None)
