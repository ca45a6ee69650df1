"""Training on a CUDA device (``-m gpu``; skipped without one): the real loop with bf16
autocast, channels_last and activation checkpointing, chunks arriving in pinned memory, and
validation predictions on the GPU agreeing with the CPU's from the same checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.train.synthstores import make_cohort, tiny_overrides
from wsipipe.train.config import load_train_config
from wsipipe.train.distributed import DistInfo
from wsipipe.train.inference import load_model, open_pipeline, predict_slides
from wsipipe.train.loop import fit, setup_run

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("method", ["ips", "dbps"])
def test_bf16_training_on_cuda(method: str, tmp_path: Path) -> None:
    labels, stores = make_cohort(tmp_path / "cohort", n_train=4, n_val=2, n_tiles=(40, 60))
    cfg = load_train_config(None, tiny_overrides(
        labels=str(labels), stores=str(stores.parent), out=str(tmp_path / "run"), method=method,
        device="cuda", precision="bf16", channels_last=True, grad_checkpointing=True,
        workers=1, epochs=2,
    ))  # fmt: skip
    run = setup_run(cfg)
    try:
        assert run.st.amp_dtype == torch.bfloat16 and run.device.type == "cuda"
        assert all(p.device.type == "cuda" for p in run.model.parameters())
        # the loader hands chunks over in pinned memory (asynchronous copies to the GPU)
        pos = run.cohort.train[0]
        chunks = list(run.pipeline.stream([pos], cfg.I).slide(pos))
        assert chunks and all(t.is_pinned() for _, t in chunks)
        before = [p.detach().clone() for p in run.model.parameters()]
        records = fit(run)
    finally:
        run.close()
    assert len(records) == 2
    for rec in records:
        assert np.isfinite(rec["train_loss"]) and rec["peak_gpu_mb"] > 0
        assert rec["train_slides"] == 4
    moved = [
        not torch.equal(a, b.detach()) for a, b in zip(before, run.model.parameters(), strict=True)
    ]
    assert sum(moved) > len(moved) // 2  # the optimiser stepped the encoder and aggregator
    # the checkpoint predicts on the GPU (bf16) what it predicts on the CPU (fp32)
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    probs = {}
    for dev, prec in (("cuda", "bf16"), ("cpu", "fp32")):
        lm = load_model(ckpt, device=dev, precision=prec)
        pipe, _ = open_pipeline(
            lm.config, run.cohort.specs, run.cohort.stores_dir, lm.settings.device
        )
        try:
            pred = predict_slides(lm.model, pipe, run.cohort.val, run.labels.tolist(), lm.settings,
                                  DistInfo())  # fmt: skip
        finally:
            pipe.close()
        probs[dev] = pred.probs
    np.testing.assert_allclose(probs["cuda"], probs["cpu"], atol=0.05)
    val = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "val_auc" in val
