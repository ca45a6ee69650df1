"""Encoder tests never touch the network: the hub is offline and its cache a temp folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

HubWriter = Callable[[str, dict[str, torch.Tensor], str], Path]


@pytest.fixture(autouse=True)
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``HF_HUB_OFFLINE=1`` and an empty hub cache under ``tmp_path`` for every test."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    return cache


@pytest.fixture
def put_in_hub_cache(offline_hub: Path) -> HubWriter:
    """Write a state dict as ``filename`` of ``repo`` in the hub cache's on-disk layout
    (``models--org--name/refs/main`` + ``snapshots/<sha>/<file>``), as `hf download` leaves it."""

    def write(
        repo: str, state: dict[str, torch.Tensor], filename: str = "model.safetensors"
    ) -> Path:
        root = offline_hub / ("models--" + repo.replace("/", "--"))
        sha = "0123456789abcdef0123456789abcdef01234567"
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / "main").write_text(sha)
        snap = root / "snapshots" / sha
        snap.mkdir(parents=True, exist_ok=True)
        path = snap / filename
        if filename.endswith(".safetensors"):
            save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        else:
            torch.save(state, path)
        return path

    return write
