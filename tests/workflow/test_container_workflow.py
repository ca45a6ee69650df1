"""The workflow's `container:` path: `snakemake --software-deployment-method apptainer` with
`image:` set runs every tile, train and heatmap job inside the image built from the
Dockerfile (tests/examples/container.py). Snakemake calls only apptainer, which cannot be
installed here: tests/workflow/apptainer_podman.py stands in for the apptainer command and
carries each call out with podman. Slow: builds or reuses the image, then 10 container jobs.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.examples import container as ct

pytest.importorskip("snakemake")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "workflows" / "Snakefile"
SHIM = Path(__file__).with_name("apptainer_podman.py")


@pytest.fixture(scope="module")
def built() -> tuple[ct.Podman, ct.Image]:
    return ct.built_or_skip(REPO)


def test_snakemake_runs_each_job_in_the_image(
    built: tuple[ct.Podman, ct.Image], tmp_path: Path
) -> None:
    podman, image = built
    from wsipipe.synth.cohort import CohortConfig, generate_cohort

    cohort = generate_cohort(
        tmp_path / "cohort", CohortConfig(n_slides=6, width=2048, height=1536, seed=1), workers=1
    )
    with cohort.labels_csv.open() as fh:
        test_ids = sorted(r["slide_id"] for r in csv.DictReader(fh) if r["split"] == "test")
    assert test_ids
    cfg = {
        "wsipipe": "wsipipe",  # the image's command: the host PATH below has no wsipipe
        "image": f"docker://{image.tag}",
        "out": "res", "slides": "cohort/slides", "labels": "cohort/labels.csv",
        "tile": {"threads": 1, "args": "--target-mpp 1.0 --tile-px 128"},
        "train": {"gpus": 0, "threads": 2, "config": "features-offline",
                  "args": "--epochs 2 --no-progress --no-tensorboard"},
        "heatmap": {"gpus": 0, "threads": 1, "annotations": "cohort/annotations"},
    }  # fmt: skip
    (tmp_path / "wf.yaml").write_text(yaml.safe_dump(cfg))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "apptainer").write_text(f'#!/bin/sh\nexec {sys.executable} {SHIM} "$@"\n')
    (bindir / "apptainer").chmod(0o755)
    log = tmp_path / "apptainer.log"
    path = os.pathsep.join([str(bindir), "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
    assert shutil.which("wsipipe", path=path) is None  # a job can only succeed in the image
    env = {**podman.env, "PATH": path, "WSIPIPE_PODMAN_ARGV": json.dumps(podman.argv()),
           "WSIPIPE_PODMAN_USER": f"{os.getuid()}:{os.getgid()}",
           "WSIPIPE_PODMAN_LOG": str(log)}  # fmt: skip
    data = tmp_path / "cohort"
    before = ct.snapshot(data)
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--configfile",
           str(tmp_path / "wf.yaml"), "--cores", "2", "--software-deployment-method",
           "apptainer", f"--apptainer-args=-B {data}:{data}:ro"]  # fmt: skip
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, (res.stdout + res.stderr)[-5000:]

    runs = [json.loads(line) for line in log.read_text().splitlines()]
    jobs = [" ".join(r[r.index("--entrypoint") :]) for r in runs]
    assert all(image.tag in j for j in jobs)
    n_tile = sum("wsipipe tile" in j for j in jobs)
    n_train = sum("wsipipe train" in j for j in jobs)
    n_heat = sum("wsipipe heatmap" in j and "cohort_predictions.csv" not in j for j in jobs)
    n_summary = sum("wsipipe heatmap" in j and "cohort_predictions.csv" in j for j in jobs)
    assert (n_tile, n_train, n_heat, n_summary) == (6, 1, len(test_ids), 1), jobs
    out = tmp_path / "res"
    assert len(list((out / "tiles" / "stores").glob("*.h5"))) == 6
    assert (out / "train" / "checkpoints" / "best.pt").is_file()
    with (out / "heatmaps" / "cohort_predictions.csv").open() as fh:
        assert sorted(p["slide_id"] for p in csv.DictReader(fh)) == test_ids
    for sid in test_ids:
        assert (out / "heatmaps" / "overlay" / f"{sid}.png").stat().st_size > 1000
    assert ct.snapshot(data) == before  # the read-only bind was honoured
