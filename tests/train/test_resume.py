"""A killed run resumed from its last checkpoint reproduces the uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.train.synthstores import cli_args, make_cohort, tiny_overrides
from wsipipe.train.config import load_train_config
from wsipipe.train.loop import config_for_resume, train

REPO = Path(__file__).resolve().parents[2]


def _lines(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


def test_resume_after_kill_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    labels, _stores = make_cohort(tmp_path, n_train=6, n_val=4, n_tiles=(10, 24))
    ov = tiny_overrides(
        labels=str(labels),
        stores=str(tmp_path),
        epochs=3,
        lr=3e-3,
        drop_ratio=0.2,
        shuffle_tiles=True,
    )
    # the reference: uninterrupted, in this process
    ref_dir = tmp_path / "ref"
    ref = train(load_train_config(None, {**ov, "out": str(ref_dir)}))
    # the same run in a subprocess, SIGKILLed once its first checkpoint exists
    run = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "wsipipe.train", *cli_args({**ov, "out": str(run)})]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 120
    last = run / "checkpoints" / "last.pt"
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    out = proc.communicate()[0].decode()
    assert proc.returncode == -signal.SIGKILL, out
    done = torch.load(last, weights_only=True)["epoch"]
    assert 1 <= done < 3, "the kill must land before the end of the run"
    resumed = train(config_for_resume(run, {}), resume=True)
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    keys = ("step", "lr", "train_loss", "train_acc", "val_auc", "val_loss", "val_bacc")
    for a, b in zip(resumed, ref, strict=True):
        for k in keys:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), (a["epoch"], k)
    # same slide order in every epoch (the resumed epochs included) and same final weights
    assert _lines(run / "train_order.jsonl") == _lines(ref_dir / "train_order.jsonl")
    w1 = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    w2 = torch.load(ref_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    for name, t in w2.items():
        assert torch.allclose(w1[name].float(), t.float(), atol=1e-5), name
