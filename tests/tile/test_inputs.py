"""Unreadable inputs and changed slides: reported per slide, never dropped or used silently."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import h5py
import pytest

from tests.conftest import real_slide
from tests.heatmap import synth
from tests.tile.test_tile_run import runner, statuses, tile
from wsipipe.cli import app
from wsipipe.errors import ConfigError, StoreError
from wsipipe.store import describe_store, open_store
from wsipipe.synth.svs import write_svs
from wsipipe.tile.inputs import resolve_slides


def summary(out: Path) -> dict[str, dict[str, str]]:
    return {r["slide_id"]: r for r in csv.DictReader((out / "summary.csv").open())}


def _links(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "good.svs").symlink_to(real_slide("CMU-1-Small-Region.svs"))
    (folder / "dangling.svs").symlink_to("/nonexistent/slide-42.svs")
    (folder / "loop.svs").symlink_to("loop.svs")


def test_dangling_and_looping_symlinks_fail_per_input_and_the_batch_goes_on(tmp_path):
    _links(tmp_path / "in")
    (tmp_path / "in" / "README").symlink_to("gone.txt")  # not a slide: ignored
    (tmp_path / "in" / "sub").mkdir()
    (tmp_path / "in" / "sub" / "up").symlink_to("..")  # a folder loop: each slide once
    lone = tmp_path / "lone.svs"
    lone.symlink_to(tmp_path / "nowhere.svs")
    out = tmp_path / "out"
    code, text = tile(str(tmp_path / "in"), str(lone), "--out", str(out), "--coords-only")
    assert code == 1, text
    st = statuses(out)
    assert sorted(st) == ["dangling", "good", "lone", "loop"]
    assert st["good"]["state"] == "done"
    assert "0 done" not in text and "1 done, 0 skipped, 3 failed" in text
    reasons = {sid: st[sid]["reason"] for sid in ("dangling", "lone", "loop")}
    assert all(st[sid]["state"] == "failed" for sid in reasons)
    assert "dangling.svs: dangling symlink -> /nonexistent/slide-42.svs" in reasons["dangling"]
    assert f"dangling symlink -> {tmp_path / 'nowhere.svs'}" in reasons["lone"]
    assert "loop.svs: symlink loop" in reasons["loop"]
    rows = summary(out)
    assert rows["loop"]["state"] == "failed" and "symlink loop" in rows["loop"]["reason"]
    assert sorted(p.name for p in (out / "stores").iterdir()) == ["good.h5"]


def test_a_broken_link_in_a_slides_csv_is_that_slides_failure(tmp_path):
    (tmp_path / "x.svs").symlink_to("missing-target.svs")
    listing = tmp_path / "slides.csv"
    listing.write_text("path,slide_id\nx.svs,patient7\n")
    (spec,) = resolve_slides([str(listing)])
    assert spec.slide_id == "patient7" and "dangling symlink -> missing-target.svs" in spec.error


def test_info_names_the_broken_link(tmp_path):
    _links(tmp_path / "in")
    result = runner.invoke(app, ["info", str(tmp_path / "in" / "loop.svs"),
                                 str(tmp_path / "in" / "dangling.svs")])  # fmt: skip
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "loop.svs: symlink loop" in text
    assert "dangling symlink -> /nonexistent/slide-42.svs" in text


def test_a_missing_plain_path_is_still_a_usage_error(tmp_path):
    # (the CLI prints a ConfigError as one line and exits 2)
    with pytest.raises(ConfigError, match=r"absent\.svs: no such file"):
        tile(str(tmp_path / "absent.svs"), "--out", str(tmp_path / "out"))


def _other_slide(path: Path) -> None:
    write_svs(path, synth.W, synth.H, synth.render, synth.MPP, tile=256, min_level_size=512)


def test_a_replaced_slide_fails_the_rerun_and_everything_that_reads_it(tmp_path):
    slide = tmp_path / "s.svs"
    shutil.copyfile(real_slide("CMU-1-Small-Region.svs"), slide)
    out = tmp_path / "out"
    code, text = tile(str(slide), "--out", str(out), "--coords-only")
    assert code == 0, text
    store = out / "stores" / "s.h5"
    with open_store(store) as s:
        assert s.meta.slide_mtime_ns == slide.stat().st_mtime_ns
        n_tiles = len(s)
    before = store.read_bytes()

    _other_slide(slide)  # another slide under the same name
    code, text = tile(str(slide), "--out", str(out), "--coords-only")
    assert code == 1, text
    reason = summary(out)["s"]["reason"]
    assert reason.startswith(f"slide changed since it was tiled: {slide} (size ")
    assert f"delete {store}" in reason and "--overwrite" in reason
    assert store.read_bytes() == before  # the store is kept as it was
    assert statuses(out)["s"]["state"] == "done"  # and its record of the good run
    # train / embed / heatmap read coords-only tiles through describe_store: refused there
    with pytest.raises(StoreError, match=r"slide changed since it was tiled: .*s\.svs"):
        describe_store("s", store)

    code, text = tile(str(slide), "--out", str(out), "--coords-only", "--overwrite")
    assert code == 0, text
    with open_store(store) as s:
        assert len(s) != n_tiles
    assert describe_store("s", store).kind == "slide"


def test_a_touched_or_copied_slide_is_not_a_changed_one(tmp_path):
    slide = tmp_path / "s.svs"
    shutil.copyfile(real_slide("CMU-1-Small-Region.svs"), slide)
    out = tmp_path / "out"
    assert tile(str(slide), "--out", str(out), "--coords-only")[0] == 0
    st = slide.stat()
    os.utime(slide, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # same bytes, new mtime
    code, text = tile(str(slide), "--out", str(out), "--coords-only")
    assert code == 0 and summary(out)["s"]["state"] == "skipped", text
    assert describe_store("s", out / "stores" / "s.h5").n_tiles > 5


def test_a_store_without_mtime_falls_back_to_the_md5(tmp_path):
    slide = tmp_path / "s.svs"
    shutil.copyfile(real_slide("CMU-1-Small-Region.svs"), slide)
    out = tmp_path / "out"
    assert tile(str(slide), "--out", str(out), "--coords-only")[0] == 0
    store = out / "stores" / "s.h5"
    with h5py.File(store, "r+") as f:  # as written before the mtime was recorded
        attrs = next(o.attrs for o in (f, *f.values()) if "slide_mtime_ns" in o.attrs)
        del attrs["slide_mtime_ns"]
    with open_store(store) as s:
        assert s.meta.slide_mtime_ns is None
    assert describe_store("s", store).kind == "slide"  # same bytes: fine
    data = bytearray(slide.read_bytes())
    data[1000] ^= 0xFF  # same size, other bytes in the first MiB
    slide.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"md5 of the first MiB differ"):
        describe_store("s", store)
