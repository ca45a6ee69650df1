"""Score tables: CSV, HDF5 (CLAM-style coords) and zarr round trips."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from wsipipe.heatmap.scores import (
    ScoreTable,
    read_scores,
    read_scores_csv,
    write_scores,
    write_scores_csv,
)


def _table(n: int = 20, heads: int = 3) -> ScoreTable:
    rng = np.random.default_rng(1)
    per_head = rng.random((n, heads))
    per_head /= per_head.sum(0)
    score = per_head.mean(1)
    return ScoreTable(
        tile_index=np.arange(n),
        coords=rng.integers(0, 10_000, (n, 2)),
        score=score,
        score_norm=rng.random(n).astype(np.float32),
        rank=np.argsort(np.argsort(-score)) + 1,
        selected=np.arange(n) < 4,
        aux=(np.arange(n) >= 4) & (np.arange(n) < 7),
        per_head=per_head,
        extra={"tumour_fraction": rng.random(n).astype(np.float32)},
    )


def test_csv_round_trip(tmp_path):
    t = _table()
    write_scores_csv(tmp_path / "s.csv", t)
    cols = read_scores_csv(tmp_path / "s.csv")
    assert list(cols)[:8] == [
        "tile_index", "x", "y", "score", "score_norm", "rank", "selected", "aux",
    ]  # fmt: skip
    assert list(cols)[8:] == ["head_0", "head_1", "head_2", "tumour_fraction"]
    assert np.allclose(cols["score"], t.score, rtol=1e-7)
    assert cols["x"].tolist() == t.coords[:, 0].tolist()
    assert cols["selected"].sum() == 4 and cols["aux"].sum() == 3
    assert np.allclose(cols["head_1"], t.per_head[:, 1], rtol=1e-7)
    assert cols["score"].sum() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("suffix", [".h5", ".zarr"])
def test_h5_and_zarr_round_trip(tmp_path, suffix):
    t = _table()
    path = tmp_path / f"s{suffix}"
    write_scores(path, t, 512, {"slide_id": "a", "prediction": {"tumor": 0.9}})
    arrays, attrs = read_scores(path)
    assert np.array_equal(arrays["coords"], t.coords)
    assert np.array_equal(arrays["score"], t.score)
    assert np.array_equal(arrays["per_head"], t.per_head)
    assert arrays["selected"].dtype == bool and arrays["selected"].sum() == 4
    assert attrs["slide_id"] == "a" and json.loads(attrs["prediction"]) == {"tumor": 0.9}
    if suffix == ".h5":  # what CLAM-style tools read
        with h5py.File(path, "r") as f:
            assert f["coords"][:].shape == (20, 2)
            assert f["coords"].attrs["patch_size_level0"] == 512
            assert f["coords"].attrs["name"] == "a"


def _reference_csv(table: ScoreTable) -> bytes:
    """Reference: every value formatted on its own, rows written by the csv module."""
    import csv
    import io

    cols = table.columns()
    text = [
        [f"{v:.8g}" for v in c.tolist()] if c.dtype.kind == "f" else [str(v) for v in c.tolist()]
        for c in cols.values()
    ]
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(list(cols))
    w.writerows(zip(*text, strict=True))
    return buf.getvalue().encode()


def test_csv_text_equals_the_csv_module_reference(tmp_path, monkeypatch):
    import wsipipe.heatmap.scores as sc

    monkeypatch.setattr(sc, "_CSV_CHUNK", 6)  # several chunks, one partial
    t = _table(n=23)
    t.score[[1, 2, 3]] = [np.nan, np.inf, -0.0]
    t.extra["flag"] = np.arange(23) % 3 == 0  # bools: True / False, as str() writes them
    write_scores_csv(tmp_path / "s.csv", t)
    assert (tmp_path / "s.csv").read_bytes() == _reference_csv(t)
    # a text column goes through the csv module's quoting
    t.extra["note"] = np.array([f"a,{i}" for i in range(23)])
    write_scores_csv(tmp_path / "t.csv", t)
    assert (tmp_path / "t.csv").read_bytes() == _reference_csv(t)
    assert b'"a,5"' in (tmp_path / "t.csv").read_bytes()


def test_table_validates_shapes():
    t = _table()
    with pytest.raises(ValueError, match="score"):
        ScoreTable(t.tile_index, t.coords, t.score[:-1], t.score_norm, t.rank, t.selected,
                   t.aux, t.per_head)  # fmt: skip
