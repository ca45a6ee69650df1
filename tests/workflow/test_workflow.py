"""The Snakemake workflow, run for real with `snakemake --cores 2` on small synthetic cohorts.

Fast (default run): tile 3 slides as independent jobs, a re-run does nothing, deleting one
store re-tiles only that slide. Slow (`-m slow`): tile -> train -> heatmap end to end.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("snakemake")

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "workflows" / "Snakefile"
WSIPIPE = f"{sys.executable} -m wsipipe"
NOTHING = "Nothing to be done"


def snakemake(workdir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--configfile",
           str(workdir / "wf.yaml"), "--cores", "2", *args]  # fmt: skip
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)


def ok(res: subprocess.CompletedProcess) -> str:
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    return out


def job_counts(output: str) -> dict[str, int]:
    """Snakemake's "Job stats" table of a dry run -> {rule: count}."""
    counts: dict[str, int] = {}
    lines = output.splitlines()
    if "Job stats:" not in lines:
        return counts
    for line in lines[lines.index("Job stats:") + 3 :]:
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            break
        if parts[0] != "total":
            counts[parts[0]] = int(parts[1])
    return counts


def write_config(workdir: Path, **cfg: object) -> None:
    base: dict[str, object] = {"wsipipe": WSIPIPE, "out": "res", "labels": ""}
    (workdir / "wf.yaml").write_text(yaml.safe_dump({**base, **cfg}))


@pytest.fixture(scope="module")
def cohort3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from wsipipe.synth.cohort import CohortConfig, generate_cohort

    root = tmp_path_factory.mktemp("cohort3")
    generate_cohort(root, CohortConfig(n_slides=3, width=2048, height=1536, seed=3), workers=2)
    return root


def test_tile_jobs_rerun_nothing_and_retile_one(cohort3: Path, tmp_path: Path) -> None:
    from wsipipe.store import open_store

    slides = sorted((cohort3 / "slides").glob("*.svs"))
    # a slide CSV: one slide renamed (the workflow's id must reach the store) with an mpp
    with (tmp_path / "slides.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "slide_id", "mpp"])
        w.writerow([slides[0], "", ""])
        w.writerow([slides[1], "case+B.2", "0.5"])
        w.writerow([slides[2], "", ""])
    ids = [slides[0].stem, "case+B.2", slides[2].stem]
    write_config(
        tmp_path, slides="slides.csv",
        tile={"threads": 1, "args": "--target-mpp 1.0 --tile-px 128"},
    )  # fmt: skip
    out = ok(snakemake(tmp_path, "-n"))
    assert job_counts(out) == {"tile": 3, "tile_summary": 1, "all": 1}

    ok(snakemake(tmp_path))
    tiles = tmp_path / "res" / "tiles"
    with (tiles / "cohort_summary.csv").open() as fh:
        summary = {r["slide_id"]: r for r in csv.DictReader(fh)}
    assert sorted(summary) == sorted(ids)
    coords = {}
    for sid in ids:
        status = json.loads((tiles / "status" / f"{sid}.json").read_text())
        assert status["state"] == "done" and status["n_tiles"] > 0
        assert int(summary[sid]["n_tiles"]) == status["n_tiles"]
        assert (tiles / "qc" / f"{sid}.png").is_file()
        assert (tiles / "tissue" / f"{sid}.geojson").is_file()
        with open_store(tiles / "stores" / f"{sid}.h5") as store:
            assert len(store) == status["n_tiles"]
            assert store.meta.slide_id == sid
            coords[sid] = np.asarray(store.coords).copy()
    renamed = json.loads((tiles / "status" / "case+B.2.json").read_text())
    assert renamed["mpp_source"] == "override"
    assert json.loads((tiles / "status" / f"{ids[0]}.json").read_text())["mpp_source"] == "file"

    # a re-run does nothing and touches nothing
    mtimes = {p: p.stat().st_mtime_ns for p in (tiles / "stores").iterdir()}
    assert NOTHING in ok(snakemake(tmp_path, "-n"))
    assert NOTHING in ok(snakemake(tmp_path))
    assert {p: p.stat().st_mtime_ns for p in (tiles / "stores").iterdir()} == mtimes

    # deleting one store re-tiles exactly that slide
    gone = tiles / "stores" / f"{ids[2]}.h5"
    gone.unlink()
    out = ok(snakemake(tmp_path, "-n"))
    assert job_counts(out) == {"tile": 1, "tile_summary": 1, "all": 1}
    assert f"stores/{ids[2]}.h5" in out
    ok(snakemake(tmp_path))
    assert gone.is_file()
    for p, t in mtimes.items():
        assert (p.stat().st_mtime_ns == t) == (p != gone), p
    with open_store(gone) as store:
        np.testing.assert_array_equal(np.asarray(store.coords), coords[ids[2]])
    assert NOTHING in ok(snakemake(tmp_path, "-n"))


def test_config_errors_are_one_line(cohort3: Path, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("slide_id,label,split\nsynth_000,tumor,train\nnot_there,normal,val\n")
    write_config(tmp_path, slides=str(cohort3 / "slides"), labels="labels.csv")
    res = snakemake(tmp_path, "-n")
    assert res.returncode != 0
    assert (
        "1 labelled slide(s) have no slide file among `slides:`: not_there"
        in res.stdout + res.stderr
    )

    write_config(tmp_path, slides=str(cohort3 / "slides"), tile={"format": "tiff"})
    res = snakemake(tmp_path, "-n")
    assert (
        res.returncode != 0
        and "`tile.format` = 'tiff' must be h5 or zarr" in res.stdout + res.stderr
    )

    write_config(tmp_path, slides=str(cohort3 / "slides"), tile={"threads": 0})
    res = snakemake(tmp_path, "-n")
    assert (
        res.returncode != 0
        and "`tile.threads` = 0 must be a number >= 1" in res.stdout + res.stderr
    )

    # labels only: the slide list comes from the CSV's path column
    (tmp_path / "l2.csv").write_text(
        f"slide_id,label,split,path\nsynth_000,tumor,train,{cohort3 / 'slides/synth_000.svs'}\n"
    )
    write_config(tmp_path, labels="l2.csv", train={"gpus": 0}, heatmap={"split": "train"})
    out = ok(snakemake(tmp_path, "-n"))
    assert job_counts(out) == {
        "tile": 1, "tile_summary": 1, "train": 1, "heatmap": 1, "heatmap_summary": 1, "all": 1,
    }  # fmt: skip


def test_slurm_profile_and_resources(cohort3: Path, tmp_path: Path) -> None:
    """Rule resources as the SLURM executor sees them (dry run: nothing is submitted)."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    (tmp_path / "labels.csv").write_text(
        "slide_id,label,split\nsynth_000,tumor,train\nsynth_001,normal,val\nsynth_002,normal,test\n"
    )
    write_config(
        tmp_path, slides=str(cohort3 / "slides"), labels="labels.csv",
        train={"gpus": 2, "threads": 16, "mem_mb": 64000, "gpu_type": "a100"},
    )  # fmt: skip
    profile = REPO / "workflows" / "profiles" / "slurm"
    out = ok(snakemake(tmp_path, "-n", "--profile", str(profile)))
    blocks = {b.split(":")[0].strip(): b for b in out.split("\nrule ")[1:]}
    # GPUs reach sbatch as --gres only: the profile zeroes the plugin's `gpu` (--gpus=<n>)
    assert "slurm_partition=gpu" in blocks["train"] and "gpu=0, gres=gpu:a100:2" in blocks["train"]
    assert "mem_mb=64000" in blocks["train"]
    assert "--workers 7" in blocks["train"]  # 16 threads / 2 GPUs - 1 loader processes per rank
    assert "torchrun --standalone --nproc_per_node=2 -m wsipipe train" in blocks["train"]
    assert "slurm_partition=cpu" in blocks["tile"] and "gpu" not in blocks["tile"].split("shell")[0]
    assert "slurm_partition=gpu" in blocks["heatmap"] and "gpu=0, gres=gpu:1" in blocks["heatmap"]

    # without the profile (a local run) the numeric `gpu` resource is the stage's GPU count
    out = ok(snakemake(tmp_path, "-n"))
    blocks = {b.split(":")[0].strip(): b for b in out.split("\nrule ")[1:]}
    assert "gpu=2, gres=gpu:a100:2" in blocks["train"]

    write_config(tmp_path, slides=str(cohort3 / "slides"), heatmap={"gpu_type": "a100 x"})
    res = snakemake(tmp_path, "-n")
    assert res.returncode != 0
    assert "`heatmap.gpu_type` = 'a100 x' must be a GRES type" in res.stdout + res.stderr


def _heatmap_registered() -> bool:
    from wsipipe.cli import app

    return any(c.name == "heatmap" for c in app.registered_commands)


def test_full_workflow_tile_train_heatmap(tmp_path: Path) -> None:
    assert _heatmap_registered()
    from wsipipe.synth.cohort import CohortConfig, generate_cohort

    cohort = generate_cohort(
        tmp_path / "cohort", CohortConfig(n_slides=6, width=2048, height=1536, seed=1), workers=2
    )
    with cohort.labels_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    test_ids = sorted(r["slide_id"] for r in rows if r["split"] == "test")
    assert test_ids
    write_config(
        tmp_path, slides="cohort/slides", labels="cohort/labels.csv",
        tile={"threads": 1, "args": "--target-mpp 1.0 --tile-px 128"},
        train={"gpus": 0, "threads": 2, "config": "quickstart",
               "args": "--epochs 2 --warmup-epochs 0 --no-progress --no-tensorboard"},
        heatmap={"gpus": 0, "threads": 1, "annotations": "cohort/annotations"},
    )  # fmt: skip
    counts = job_counts(ok(snakemake(tmp_path, "-n")))
    assert counts["tile"] == 6 and counts["train"] == 1 and counts["heatmap"] == len(test_ids)
    ok(snakemake(tmp_path, timeout=1200))
    res = tmp_path / "res"
    assert (res / "train" / "checkpoints" / "best.pt").is_file()
    with (res / "heatmaps" / "cohort_predictions.csv").open() as fh:
        preds = list(csv.DictReader(fh))
    assert sorted(p["slide_id"] for p in preds) == test_ids
    for sid in test_ids:
        status = json.loads((res / "heatmaps" / "status" / f"{sid}.json").read_text())
        assert status["state"] == "done"
        assert any((res / "heatmaps" / "overlay").glob(f"{sid}*.png"))
    assert (res / "heatmaps" / "cohort_evaluation.csv").is_file()
    assert NOTHING in ok(snakemake(tmp_path, "-n"))
