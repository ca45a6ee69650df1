"""End to end: `wsipipe heatmap` on a real (small, generated) SVS slide and its stores."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tests.heatmap import synth
from tests.models.helpers import stream_attention
from wsipipe.errors import ConfigError
from wsipipe.heatmap.config import HeatmapConfig
from wsipipe.heatmap.geojson import read_tiles_geojson
from wsipipe.heatmap.render import colormap_lut
from wsipipe.heatmap.run import run_heatmaps
from wsipipe.heatmap.scores import read_scores, read_scores_csv
from wsipipe.models import ips_scan
from wsipipe.store import open_store
from wsipipe.store.features import open_features
from wsipipe.train.inference import load_model

openslide = pytest.importorskip("openslide")


def _cfg(root, **kw) -> HeatmapConfig:
    base = {
        "checkpoint": str(root / "ck.pt"), "stores": str(root / "tile"), "out": str(root / "out"),
        "annotations": str(root / "annotations"), "workers": 0, "device": "cpu",
        "precision": "fp32",  # compared with fp32 references computed here
        "overlay_mpp": 2.0, "overlay_min_px": 64, "pyramid_mpp": 2.0,
    }  # fmt: skip
    base.update(kw)
    return HeatmapConfig(**base)  # type: ignore[arg-type]


def _store_chunks(store, size):
    n = len(store)
    for s in range(0, n, size):
        idx = np.arange(s, min(n, s + size))
        tiles = torch.from_numpy(store.read_tiles(idx)).permute(0, 3, 1, 2).contiguous()
        yield torch.from_numpy(idx), tiles


def test_heatmap_end_to_end(tmp_path):
    synth.make_slide_dir(tmp_path, ("a", "b"))
    ck = synth.make_checkpoint(tmp_path / "ck.pt")
    outcomes = run_heatmaps(_cfg(tmp_path))
    assert sorted((o.slide_id, o.state) for o in outcomes) == [("a", "done"), ("b", "done")]
    out = tmp_path / "out"
    n = len(synth.tile_coords())

    # scores: the exact softmax over ALL tiles, and the IPS selection, as computed separately
    cols = read_scores_csv(out / "scores" / "a.csv")
    lm = load_model(ck, "cpu")
    with open_store(tmp_path / "tile" / "stores" / "a.h5") as store:
        ref = stream_attention(lm.model.encoder, lm.model.aggregator, _store_chunks(store, 16))
        scan = ips_scan(lm.model.encoder, lm.model.aggregator, _store_chunks(store, 16), 6)
        coords = store.coords
    assert len(cols["score"]) == n and cols["score"].sum() == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(cols["score"], ref.scores().numpy(), rtol=1e-5, atol=1e-9)
    assert set(np.flatnonzero(cols["selected"]).tolist()) == set(scan.indices.tolist())
    assert cols["aux"].sum() == 0
    assert cols["rank"][np.argmax(cols["score"])] == 1
    assert np.array_equal(cols["x"], coords[:, 0]) and np.array_equal(cols["y"], coords[:, 1])
    arrays, attrs = read_scores(out / "scores" / "a.h5")
    assert np.array_equal(arrays["coords"], coords)
    assert np.allclose(arrays["score"], cols["score"], rtol=1e-6)
    assert attrs["slide_id"] == "a"

    # the prediction equals `wsipipe predict` on the same store
    from wsipipe.train.predict import predict

    res = predict(ck, tmp_path / "pred", str(tmp_path / "tile"), overrides={"workers": 0})
    pred = json.loads((out / "predictions" / "a.json").read_text())
    want = res.probs[res.slide_ids.index("a")]
    assert [pred["probs"]["normal"], pred["probs"]["tumor"]] == pytest.approx(want, abs=1e-5)
    assert pred["n_selected"] == 6 and pred["n_tiles"] == n and pred["thumbnail"] == "slide"
    assert (out / "predictions.csv").read_text().splitlines()[0].startswith("slide_id,pred")

    # pyramidal TIFF: right size and mpp, each tile's colour at its place
    lut = colormap_lut("jet")
    with openslide.OpenSlide(str(out / "pyramid" / "a.tif")) as osl:
        assert osl.dimensions == (synth.W // 4, synth.H // 4)
        assert float(osl.properties["openslide.mpp-x"]) == pytest.approx(2.0)
        px = np.asarray(osl.read_region((0, 0), 0, osl.dimensions))[..., :3]
    for i in range(n):
        x, y = coords[i] // 4 + synth.TILE0 // 8
        assert px[y, x].tolist() == lut[round(cols["score_norm"][i] * 255)].tolist()
    assert (px[:32, :] == 255).all()  # glass above the tissue: no tile

    # GeoJSON: one square per tile with the score
    polys, meas = read_tiles_geojson(out / "geojson" / "a.geojson")
    assert len(polys) == n
    assert all(
        p.bounds == (x, y, x + 128, y + 128) for p, (x, y) in zip(polys, coords, strict=True)
    )
    assert np.allclose(meas["attention"], cols["score"], rtol=1e-6)

    # overlay: thumbnail (2 um/px = 4 level-0 px per px) + colour bar; colour over tissue tiles
    from wsipipe.slide import open_slide

    with open_slide(
        synth.make_slide_dir.__globals__["Path"](tmp_path / "slides" / "slide.svs")
    ) as s:
        thumb, ds = s.thumbnail(2.0)
    assert ds == pytest.approx(4.0)
    ov = np.asarray(Image.open(out / "overlay" / "a.png"))
    assert ov.shape[1] > thumb.shape[1] and ov.shape[0] >= thumb.shape[0]
    i = int(np.argmax(cols["rank"]))  # the least attended tile: not outlined
    x, y = coords[i] // 4 + 16
    blend = np.rint(0.5 * thumb[y, x] + 0.5 * lut[round(cols["score_norm"][i] * 255)])
    assert ov[y, x, :3].tolist() == blend.astype(int).tolist()
    assert ov[10, 10, :3].tolist() == thumb[10, 10].tolist()  # glass untouched
    gal = np.asarray(Image.open(out / "gallery" / "a.png"))
    assert gal.shape[:2] == (2 * (192 + 16 + 4), 5 * (192 + 4))

    # evaluation against the annotated tumour square (4 tiles)
    ev = json.loads((out / "evaluation" / "a.json").read_text())
    assert ev["n_tumour_tiles"] == 4 and cols["tumour_fraction"].sum() == 4
    tum = cols["tumour_fraction"] >= 0.5
    top10 = np.argsort(-cols["score"], kind="stable")[:10]
    assert ev["topk_in_tumour"] == pytest.approx(tum[top10].mean())
    assert ev["tumour_selected"] == pytest.approx((tum & (cols["selected"] > 0)).sum() / 4)
    table = (out / "evaluation.csv").read_text().splitlines()
    assert table[0].startswith("slide_id,n_tiles") and table[-1].startswith("overall,")

    # a second run skips both slides; a changed rendering option redoes them
    again = run_heatmaps(_cfg(tmp_path))
    assert {o.state for o in again} == {"skipped"}
    redo = run_heatmaps(_cfg(tmp_path, colormap="viridis", pyramid=False, geojson=False))
    assert {o.state for o in redo} == {"done"}


def test_dbps_coords_only_zarr_and_failures(tmp_path):
    synth.make_slide_dir(tmp_path, ("c",), pixels="none", fmt="zarr")
    synth.make_slide_dir(tmp_path, ("d",))
    synth.make_checkpoint(tmp_path / "ck.pt", method="dbps", M=5, I=16, S=7)
    (tmp_path / "tile" / "stores" / "e.h5").write_bytes(b"not a store at all")
    outcomes = run_heatmaps(_cfg(tmp_path, annotations=""))
    states = {o.slide_id: o.state for o in outcomes}
    assert states == {"c": "done", "d": "done", "e": "failed"}
    failed = next(o for o in outcomes if o.slide_id == "e")
    assert "e.h5" in failed.reason and "\n" not in failed.reason
    out = tmp_path / "out"
    cols = read_scores_csv(out / "scores" / "c.csv")
    assert cols["selected"].sum() == 5 and cols["aux"].sum() == 7
    assert not (cols["selected"].astype(bool) & cols["aux"].astype(bool)).any()
    arrays, _ = read_scores(out / "scores" / "c.zarr")
    assert arrays["aux"].sum() == 7
    assert (out / "gallery" / "c.png").exists()  # tiles read from the slide
    assert not (out / "evaluation").exists()
    status = json.loads((out / "status" / "e.json").read_text())
    assert status["state"] == "failed"


def test_blank_canvas_when_the_slide_is_gone(tmp_path):
    synth.make_slide_dir(tmp_path, ("f",))
    synth.make_checkpoint(tmp_path / "ck.pt")
    (tmp_path / "slides" / "slide.svs").unlink()
    outcomes = run_heatmaps(_cfg(tmp_path, annotations=""))
    assert [o.state for o in outcomes] == ["done"]
    pred = json.loads((tmp_path / "out" / "predictions" / "f.json").read_text())
    assert pred["thumbnail"].startswith("blank")
    with openslide.OpenSlide(str(tmp_path / "out" / "pyramid" / "f.tif")) as osl:
        # extent from the tiles: tissue ends at (1408, 896) -> 352 x 224 at 4 px per px
        assert osl.dimensions == (352, 224)


def test_a_slide_changed_since_tiling_is_never_read_as_the_tiled_one(tmp_path):
    synth.make_slide_dir(tmp_path, ("c",), pixels="none")  # tiles come from the slide
    synth.make_slide_dir(tmp_path, ("d",))  # tiles in the store; the slide is the backdrop
    synth.make_checkpoint(tmp_path / "ck.pt")
    slide = tmp_path / "slides" / "slide.svs"
    with slide.open("ab") as fh:  # another file under the slide's name
        fh.write(b"\0" * 4096)
    outcomes = {o.slide_id: o for o in run_heatmaps(_cfg(tmp_path, annotations=""))}
    assert outcomes["c"].state == "failed" and outcomes["d"].state == "done"
    reason = outcomes["c"].reason
    assert reason.startswith("slide changed since it was tiled:") and str(slide) in reason
    assert "c.h5" in reason and "--overwrite" in reason and "\n" not in reason
    pred = json.loads((tmp_path / "out" / "predictions" / "d.json").read_text())
    assert pred["thumbnail"].startswith("blank: slide changed since it was tiled")


def test_bad_inputs_are_one_line_config_errors(tmp_path):
    synth.make_slide_dir(tmp_path, ("g",))
    with pytest.raises(ConfigError, match="checkpoint"):
        run_heatmaps(_cfg(tmp_path))
    synth.make_checkpoint(tmp_path / "ck.pt")
    with pytest.raises(ConfigError, match="no store for zz"):
        run_heatmaps(_cfg(tmp_path, slides=("g", "zz")))
    with pytest.raises(ConfigError, match="not a plain name"):
        run_heatmaps(_cfg(tmp_path, slides=("../g",)))
    with pytest.raises(ConfigError, match="annotations"):
        run_heatmaps(_cfg(tmp_path, annotations=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match="alpha"):
        _cfg(tmp_path, alpha=2.0)
    assert math.isfinite(_cfg(tmp_path).alpha)


def test_without_stores_the_training_runs_are_used(tmp_path):
    """As `wsipipe predict`: no --stores -> the stores the checkpoint's run trained on; a
    checkpoint that recorded none -> the one-line error naming the option."""
    synth.make_slide_dir(tmp_path, ("g",))
    synth.make_checkpoint(tmp_path / "ck.pt", stores=str(tmp_path / "tile"))
    outcomes = run_heatmaps(_cfg(tmp_path, stores="", annotations=""))
    assert [(o.slide_id, o.state) for o in outcomes] == [("g", "done")]
    synth.make_checkpoint(tmp_path / "ck.pt")
    with pytest.raises(ConfigError, match="--stores is not set"):
        run_heatmaps(_cfg(tmp_path, stores="", annotations="", out=str(tmp_path / "o2")))


def test_overlay_resolution_is_clamped_to_a_useful_size():
    from wsipipe.heatmap.outputs import overlay_mpp

    cfg = HeatmapConfig()  # 8 um/px, 1024 .. 4096 px
    # a CAMELYON-size slide (100k x 200k px at 0.25 um) -> 50 mm / 4096 px
    assert overlay_mpp(cfg, 100_000, 200_000, 0.25) == pytest.approx(50_000 / 4096)
    # 20 mm at 8 um/px = 2500 px: as asked
    assert overlay_mpp(cfg, 40_000, 30_000, 0.5) == 8.0
    # a small slide (3 mm) is refined to 1024 px, never finer than the slide itself
    assert overlay_mpp(cfg, 6144, 4608, 0.5) == pytest.approx(3072 / 1024)
    assert overlay_mpp(cfg, 500, 400, 0.5) == 0.5
    with pytest.raises(ConfigError, match="overlay_min_px"):
        HeatmapConfig(overlay_min_px=5000)


@pytest.mark.parametrize("overlap", [True, False])
def test_a_slide_failing_while_its_outputs_are_written_fails_alone(tmp_path, monkeypatch, overlap):
    """A failure in the output stage (here a broken annotation file) fails that slide only,
    publishes nothing of it, and a re-run after the fix redoes just that slide. With
    ``overlap`` (what a GPU run does) slide k's outputs are written while k+1 is scored."""
    import wsipipe.heatmap.run as hr

    staged = hr.run_staged_jobs
    monkeypatch.setattr(
        hr, "run_staged_jobs", lambda *a, **k: staged(*a, **{**k, "overlap": overlap})
    )
    synth.make_slide_dir(tmp_path, ("a", "b", "c"))
    synth.make_checkpoint(tmp_path / "ck.pt")
    good = (tmp_path / "annotations" / "b.xml").read_text()
    (tmp_path / "annotations" / "b.xml").write_text("<ASAP_Annotations><Annotations>")
    outcomes = run_heatmaps(_cfg(tmp_path))
    assert [(o.slide_id, o.state) for o in outcomes] == [
        ("a", "done"), ("b", "failed"), ("c", "done"),
    ]  # fmt: skip
    failed = outcomes[1]
    assert "b.xml" in failed.reason and "not well-formed XML" in failed.reason
    out = tmp_path / "out"
    assert [p.relative_to(out).as_posix() for p in out.glob("*/b.*")] == ["status/b.json"]
    assert (out / "overlay" / "c.png").exists()
    assert not any((out / ".tmp").iterdir()) and not any((out / "locks").iterdir())
    done_c = (out / "status" / "c.json").stat().st_mtime_ns
    (tmp_path / "annotations" / "b.xml").write_text(good)
    again = run_heatmaps(_cfg(tmp_path))
    assert sorted((o.slide_id, o.state) for o in again) == [
        ("a", "skipped"), ("b", "done"), ("c", "skipped"),
    ]  # fmt: skip
    assert (out / "status" / "c.json").stat().st_mtime_ns == done_c
    assert (out / "overlay" / "b.png").exists()


def test_features_mode_checkpoint_uses_its_feature_cache(tmp_path):
    """A features-mode checkpoint scores the cached features of the frozen encoder (embedded
    on first use into --features-dir, never into the tiling output); its scores are the exact
    softmax of the model over those features."""
    synth.make_slide_dir(tmp_path, ("a", "b"))
    ck = synth.make_checkpoint(tmp_path / "ck.pt", mode="features")
    cache = tmp_path / "feature-cache"
    outcomes = run_heatmaps(_cfg(tmp_path, annotations="", features_dir=str(cache)))
    assert sorted((o.slide_id, o.state) for o in outcomes) == [("a", "done"), ("b", "done")]
    assert sorted(p.name for p in cache.rglob("*.h5")) == ["a.h5", "b.h5"]
    assert not (tmp_path / "tile" / "features").exists()
    feats = torch.from_numpy(np.asarray(open_features(next(cache.rglob("a.h5"))))).float()
    lm = load_model(ck, "cpu")
    chunks = ((torch.arange(s, min(len(feats), s + 16)), feats[s : s + 16])
              for s in range(0, len(feats), 16))  # fmt: skip
    ref = stream_attention(lm.model.encoder, lm.model.aggregator, chunks)
    cols = read_scores_csv(tmp_path / "out" / "scores" / "a.csv")
    assert len(cols["score"]) == len(feats) == len(synth.tile_coords())
    assert np.allclose(cols["score"], ref.scores().numpy(), rtol=1e-5, atol=1e-9)
    assert cols["selected"].sum() == 6
    # a second run reads the cache (same features: same scores)
    again = run_heatmaps(
        _cfg(tmp_path, annotations="", features_dir=str(cache), out=str(tmp_path / "o2"))
    )
    assert [o.state for o in again] == ["done", "done"]
    cols2 = read_scores_csv(tmp_path / "o2" / "scores" / "a.csv")
    assert np.array_equal(cols2["score"], cols["score"])
