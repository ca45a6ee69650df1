"""torchrun with 2 CPU processes (gloo): slides sharded across ranks, metrics on rank 0."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.train.synthstores import cli_args, make_cohort, tiny_overrides

REPO = Path(__file__).resolve().parents[2]


def test_torchrun_two_processes_gloo(tmp_path: Path) -> None:
    labels, _stores = make_cohort(tmp_path, n_train=8, n_val=5, n_tiles=(10, 20))
    run = tmp_path / "run"
    ov = tiny_overrides(
        labels=str(labels), stores=str(tmp_path), out=str(run), epochs=2, method="dbps", workers=1
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "wsipipe.train",
        *cli_args(ov),
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # each epoch: the 8 training slides split into two disjoint shards of 4
    order = [json.loads(ln) for ln in (run / "train_order.jsonl").read_text().splitlines()]
    assert [o["epoch"] for o in order] == [1, 2]
    for o in order:
        r0, r1 = o["ranks"]
        assert len(r0) == len(r1) == 4 and not set(r0) & set(r1)
        assert sorted(r0 + r1) == [f"s{i:03d}" for i in range(8)]
    # rank 0 alone writes the metrics; gathered validation covers all 5 slides exactly once
    recs = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 2]
    assert recs[-1]["train_slides"] == 8 and recs[-1]["val_n"] == 5
    assert recs[-1]["step"] == 2 * 2  # 4 slides per rank, batch 2 -> 2 steps per epoch
    rows = list(csv.DictReader((run / "predictions" / "val_epoch_002.csv").open()))
    assert sorted(r["slide_id"] for r in rows) == [f"s{i:03d}" for i in range(8, 13)]
    assert proc.stderr.count("epoch 2/2") == 1  # one log line (rank 0)
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ck["epoch"] == 2 and ck["step"] == 4
    assert not any(k.startswith("module.") for k in ck["model"])  # saved without the DDP wrapper
