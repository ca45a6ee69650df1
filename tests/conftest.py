"""Shared fixtures: the real slides and tiles in ../shared/data/real (never copied)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL = (REPO / ".." / "shared" / "data" / "real").resolve()
REAL_SLIDES = REAL / "slides"
REAL_TILES = REAL / "tiles"


def real_slide(name: str) -> Path:
    """Path of a real slide, skipping the test when the shared data is absent."""
    path = REAL_SLIDES / name
    if not path.exists():
        pytest.skip(f"real slide {path} not available")
    return path


def real_tile(name: str) -> Path:
    path = REAL_TILES / name
    if not path.exists():
        pytest.skip(f"real tile {path} not available")
    return path
