"""The Snakemake workflow on a real one-node SLURM cluster (tests/workflow/slurm_cluster.py),
submitted with `--executor slurm --profile workflows/profiles/slurm` and checked against a
local `--cores 2` run.

Default run: the tile stage (one sbatch job per slide); a second submission does nothing;
deleting one store re-submits that slide's job only; a truncated slide fails its own job only.
Slow (`-m slow`): tile -> train -> heatmap end to end, GPU requests on the `gpu` partition.
Skipped when the SLURM and MUNGE programs are missing and cannot be installed (not root, no
apt-get, WSIPIPE_SLURM_INSTALL=0).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.workflow.slurm_cluster import SlurmCluster, prepare
from tests.workflow.test_workflow import NOTHING, SNAKEFILE, WSIPIPE, job_counts, ok

pytest.importorskip("snakemake")
pytest.importorskip("snakemake_executor_plugin_slurm")

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "workflows" / "profiles" / "slurm"
# What one job asks for, sized for a 2-core node (the profile's defaults are a real cluster's).
TILE = {"threads": 1, "mem_mb": 2000, "runtime": 10, "args": "--target-mpp 1.0 --tile-px 128"}
TRAIN = {"gpus": 1, "threads": 2, "mem_mb": 4000, "runtime": 20, "config": "quickstart",
         "args": "--epochs 2 --warmup-epochs 0 --no-progress --no-tensorboard"}  # fmt: skip
HEATMAP = {"gpus": 1, "threads": 1, "mem_mb": 2000, "runtime": 10, "split": "val"}


@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmCluster]:
    reason = prepare()
    if reason:
        pytest.skip(f"no SLURM cluster: {reason}")
    cluster = SlurmCluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 generated slides, 2 tumour + 2 normal; labels.csv with one of each in train and val."""
    from wsipipe.synth.cohort import CohortConfig, generate_cohort

    root = tmp_path_factory.mktemp("slurm_cohort")
    made = generate_cohort(root, CohortConfig(n_slides=4, width=2048, height=1536, seed=1),
                           workers=2)  # fmt: skip
    with made.labels_csv.open() as fh:
        labels = {r["slide_id"]: r["label"] for r in csv.DictReader(fh)}
    seen: dict[str, int] = {}
    rows = []
    for sid, label in sorted(labels.items()):
        rows.append((sid, label, ("train", "val")[seen.get(label, 0)]))
        seen[label] = seen.get(label, 0) + 1
    assert seen == {"tumor": 2, "normal": 2}
    with (root / "labels.csv").open("w", newline="") as fh:
        csv.writer(fh).writerows([("slide_id", "label", "split"), *rows])
    return root


def write_config(workdir: Path, **cfg: object) -> None:
    workdir.mkdir(exist_ok=True)
    base: dict[str, object] = {"wsipipe": WSIPIPE, "out": "res", "tile": TILE}
    (workdir / "wf.yaml").write_text(yaml.safe_dump({**base, **cfg}))


def snakemake(workdir: Path, args: list[str], env: dict[str, str] | None = None,
              timeout: float = 900) -> subprocess.CompletedProcess[str]:  # fmt: skip
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE),
           "--configfile", str(workdir / "wf.yaml"), *args]  # fmt: skip
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def local(workdir: Path, *targets: str) -> str:
    return ok(snakemake(workdir, ["--cores", "2", *targets]))


def submit(cluster: SlurmCluster, workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`snakemake --executor slurm --profile workflows/profiles/slurm`, plus what this cluster
    needs: job states from squeue (it has no accounting), the first status check after 1 s."""
    return snakemake(workdir, ["--executor", "slurm", "--profile", str(PROFILE),
                               "--slurm-status-command", "squeue",
                               "--slurm-init-seconds-before-status-checks", "1", *args],
                     env=cluster.env)  # fmt: skip


def last_job(cluster: SlurmCluster) -> int:
    jobs = cluster.jobs()
    return int(jobs[-1]["id"]) if jobs else 0


def jobs_since(cluster: SlurmCluster, after: int) -> list[dict[str, str]]:
    return [j for j in cluster.jobs() if int(j["id"]) > after]


def by_rule(jobs: list[dict[str, str]]) -> dict[str, list[str]]:
    """{"rule_<rule>[_wildcards_<slide>]" (the plugin's job comment): [states]}"""
    out: dict[str, list[str]] = {}
    for j in jobs:
        out.setdefault(j["comment"], []).append(j["state"])
    return out


def store_content(path: Path) -> tuple[np.ndarray, list[bytes]]:
    from wsipipe.store import open_store

    with open_store(path) as store:
        return np.asarray(store.coords).copy(), [store.read_encoded(i) for i in range(len(store))]


def assert_same_store(a: Path, b: Path) -> None:
    (ca, ta), (cb, tb) = store_content(a), store_content(b)
    np.testing.assert_array_equal(ca, cb)
    assert len(ta) == len(tb) > 0 and ta == tb, f"{a} and {b} hold different tiles"


def assert_resources(job: dict[str, str], partition: str, cpus: int, mem_mb: int,
                     minutes: int, gpus: int = 0) -> None:  # fmt: skip
    """What SLURM allocated equals what the rule (workflow config + profile) declared."""
    assert job["state"] == "COMPLETED", job
    got = (job["partition"], job["cpus"], job["memory"], job["time"])
    assert got == (partition, str(cpus), f"{mem_mb}M", f"{minutes}:00"), job
    assert job["gres"] == (f"gres:gpu:{gpus}" if gpus else "N/A"), job


def test_slurm_tile_jobs_rerun_retile_and_failed_slide(
    slurm: SlurmCluster, cohort: Path, tmp_path: Path
) -> None:
    slides = sorted((cohort / "slides").glob("*.svs"))[:2]  # one wave of jobs on 2 cores
    ids = [p.stem for p in slides]
    here, there = tmp_path / "local", tmp_path / "slurm"
    for workdir in (here, there):
        write_config(workdir, slides=[str(p) for p in slides], labels="")
    local(here, "tile_all")

    # one sbatch job per slide, sized as the rule says, on the profile's cpu partition
    mark = last_job(slurm)
    ok(submit(slurm, there, "tile_all"))
    jobs = jobs_since(slurm, mark)
    assert by_rule(jobs) == {f"rule_tile_wildcards_{sid}": ["COMPLETED"] for sid in ids}
    for job in jobs:
        assert_resources(job, "cpu", cpus=1, mem_mb=2000, minutes=10)
    tiles, ref = there / "res" / "tiles", here / "res" / "tiles"
    for sid in ids:
        assert json.loads((tiles / "status" / f"{sid}.json").read_text())["state"] == "done"
        assert_same_store(tiles / "stores" / f"{sid}.h5", ref / "stores" / f"{sid}.h5")
    with (tiles / "cohort_summary.csv").open() as a, (ref / "cohort_summary.csv").open() as b:
        assert [r["n_tiles"] for r in csv.DictReader(a)] == [
            r["n_tiles"] for r in csv.DictReader(b)
        ]

    # a second submission submits nothing and touches nothing
    mtimes = {p: p.stat().st_mtime_ns for p in (tiles / "stores").iterdir()}
    mark = last_job(slurm)
    assert NOTHING in ok(submit(slurm, there, "tile_all"))
    assert jobs_since(slurm, mark) == []

    # one store deleted + a truncated slide added: two tile jobs; the truncated one fails, the
    # other finishes (the profile's `keep-going`; `--retries 0` only saves the retry's time)
    gone = tiles / "stores" / f"{ids[1]}.h5"
    gone.unlink()
    broken = tmp_path / "extra" / "broken.svs"
    broken.parent.mkdir()
    broken.write_bytes(slides[0].read_bytes()[:200_000])
    write_config(there, slides=[*map(str, slides), str(broken)], labels="")
    mark = last_job(slurm)
    res = submit(slurm, there, "tile_all", "--retries", "0")
    assert res.returncode != 0, res.stdout[-3000:]
    jobs = jobs_since(slurm, mark)
    assert by_rule(jobs) == {
        f"rule_tile_wildcards_{ids[1]}": ["COMPLETED"],
        "rule_tile_wildcards_broken": ["FAILED"],
    }, jobs
    assert_same_store(gone, ref / "stores" / f"{ids[1]}.h5")
    for p, t in mtimes.items():
        assert (p.stat().st_mtime_ns == t) == (p != gone), p

    # the reason: in wsipipe's status record (kept in failed/, Snakemake deletes the failed
    # job's outputs), in the rule's log and in the SLURM job's log
    assert not (tiles / "status" / "broken.json").exists()
    record = json.loads((tiles / "failed" / "broken.json").read_text())
    assert record["state"] == "failed" and "truncated" in record["reason"], record
    assert "broken: failed" in (tiles / "logs" / "broken.log").read_text()
    (jid,) = [j["id"] for j in jobs if j["comment"] == "rule_tile_wildcards_broken"]
    log = there / ".snakemake" / "slurm_logs" / "rule_tile" / "broken" / f"{jid}.log"
    assert json.dumps(record["reason"]) in log.read_text(), log
    assert str(log) in res.stdout + res.stderr  # Snakemake names the log of the failed job


@pytest.mark.slow
def test_slurm_full_workflow_equals_local(
    slurm: SlurmCluster, cohort: Path, tmp_path: Path
) -> None:
    here, there = tmp_path / "local", tmp_path / "slurm"
    for workdir in (here, there):
        write_config(workdir, slides=str(cohort / "slides"), labels=str(cohort / "labels.csv"),
                     train=TRAIN, heatmap=HEATMAP)  # fmt: skip
    local(here)
    with (cohort / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    ids = sorted(r["slide_id"] for r in rows)
    val = sorted(r["slide_id"] for r in rows if r["split"] == "val")

    mark = last_job(slurm)
    ok(submit(slurm, there))
    jobs = jobs_since(slurm, mark)
    assert by_rule(jobs) == {
        **{f"rule_tile_wildcards_{sid}": ["COMPLETED"] for sid in ids},
        "rule_train": ["COMPLETED"],
        **{f"rule_heatmap_wildcards_{sid}": ["COMPLETED"] for sid in val},
    }
    for job in jobs:
        if job["comment"].startswith("rule_tile_"):
            assert_resources(job, "cpu", cpus=1, mem_mb=2000, minutes=10)
        elif job["comment"] == "rule_train":
            assert_resources(job, "gpu", cpus=2, mem_mb=4000, minutes=20, gpus=1)
        else:
            assert_resources(job, "gpu", cpus=1, mem_mb=2000, minutes=10, gpus=1)

    res, ref = there / "res", here / "res"
    for sid in ids:
        assert_same_store(res / "tiles" / "stores" / f"{sid}.h5",
                          ref / "tiles" / "stores" / f"{sid}.h5")  # fmt: skip
    predictions = (res / "heatmaps" / "cohort_predictions.csv").read_text()
    assert predictions == (ref / "heatmaps" / "cohort_predictions.csv").read_text()
    assert sorted(r["slide_id"] for r in csv.DictReader(predictions.splitlines())) == val
    for sid in val:
        scores = f"heatmaps/scores/{sid}.csv"
        assert (res / scores).read_text() == (ref / scores).read_text()
        assert json.loads((res / "heatmaps" / "status" / f"{sid}.json").read_text())["state"] == (
            "done"
        )

    mark = last_job(slurm)
    assert NOTHING in ok(submit(slurm, there))
    assert jobs_since(slurm, mark) == []

    # deleting one store re-submits its tile job and what depends on it: train, heatmaps
    (res / "tiles" / "stores" / f"{val[0]}.h5").unlink()
    assert job_counts(ok(submit(slurm, there, "-n"))) == {
        "tile": 1, "tile_summary": 1, "train": 1, "heatmap": len(val), "heatmap_summary": 1,
        "all": 1,
    }  # fmt: skip
    mark = last_job(slurm)
    ok(submit(slurm, there))
    assert by_rule(jobs_since(slurm, mark)) == {
        f"rule_tile_wildcards_{val[0]}": ["COMPLETED"],
        "rule_train": ["COMPLETED"],
        **{f"rule_heatmap_wildcards_{sid}": ["COMPLETED"] for sid in val},
    }
    assert (res / "heatmaps" / "cohort_predictions.csv").read_text() == predictions
