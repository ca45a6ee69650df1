"""Train IPS or DBPS on Megapixel MNIST with ``wsipipe.models`` (the IPS paper's settings).

    python examples/megapixel_mnist/train.py --out runs/mm-ips                 # IPS, GPU
    python examples/megapixel_mnist/train.py --method dbps --out runs/mm-dbps  # DBPS
    python examples/megapixel_mnist/train.py --smoke --out /tmp/mm-smoke       # CPU, < 1 min

Defaults (IPS paper, Megapixel MNIST): 5,000 training and 1,000 test canvases of 1500 x 1500
px, 50 px patches (N = 900), M = 100, I = 100, a ResNet-18 cut after its second residual stage
(1 input channel, random init, D = 128) plus a 1-D sinusoidal position encoding, the
cross-attention aggregator with H = 8, D_k = 16, D_inner = 512, dropout 0.1 and one query token
per task, AdamW lr 1e-3, weight decay 0.1, batch 16, 150 epochs with 10 warm-up epochs and
cosine decay. Per epoch, ``metrics.jsonl`` gets the training loss, the test accuracy of each
task, the epoch time and the peak memory (GPU and host).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from canvases import (
    TASKS,
    CanvasConfig,
    load_mnist,
    make_specs,
    noise_patterns,
    render,
    to_patches,
)

from wsipipe.models import (
    AggregatorConfig,
    CrossAttentionAggregator,
    TaskSpec,
    collate_scan_results,
    dbps_scan,
    gradient_pass,
    ips_scan,
    pad_batch,
    random_patch_drop,
)
from wsipipe.train.schedule import WarmupCosine


@dataclass(frozen=True)
class RunConfig:
    """One run. Defaults: the IPS paper's Megapixel MNIST setting."""

    out: str = "runs/megapixel-mnist"
    method: str = "ips"  # ips | dbps
    M: int = 100
    I: int = 100  # noqa: E741
    S: int = 300  # DBPS only (our choice: 3 x M, the DBPS paper's M=12 / S=36 ratio)
    drop_ratio: float = 0.0  # random patch drop in training
    n_train: int = 5000
    n_test: int = 1000
    size: int = 1500
    patch: int = 50
    n_noise: int = 50
    dim: int = 128
    heads: int = 8
    dim_head: int = 16
    dim_inner: int = 512
    dropout: float = 0.1
    attn_dropout: float = 0.1
    batch_size: int = 16
    epochs: int = 150
    warmup_epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.1
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on CUDA) | bf16 | fp32
    workers: int = 4  # canvas-rendering loader processes

    def __post_init__(self) -> None:
        if self.method not in ("ips", "dbps"):
            raise ValueError(f"--method {self.method!r} must be ips or dbps")
        if min(self.M, self.I, self.batch_size, self.epochs, self.n_train, self.n_test) < 1:
            raise ValueError("M, I, batch size, epochs and canvas counts must be >= 1")
        if self.method == "dbps" and self.S < 1:
            raise ValueError("--S must be >= 1 with --method dbps")
        if not 0.0 <= self.drop_ratio < 1.0:
            raise ValueError(f"--drop-ratio {self.drop_ratio} must be in [0, 1)")


SMOKE: dict[str, Any] = dict(
    n_train=8, n_test=4, size=300, n_noise=6, M=8, I=12, S=8, batch_size=4, epochs=2,
    warmup_epochs=1, device="cpu", precision="fp32", workers=0,
)  # fmt: skip


# ---- model ----------------------------------------------------------------------------------


class PatchEncoder(nn.Module):
    """ResNet-18 up to its second residual stage (1 input channel) + position encoding.

    Input (k, 3, p, p) uint8 patches: channel 0 pixels, channels 1 / 2 the grid row / column
    (see canvases.to_patches). Output (k, D): pooled features + sinusoid(row * grid + col).
    """

    def __init__(self, dim: int, grid: int) -> None:
        super().__init__()
        from torchvision.models import resnet18

        net = resnet18(weights=None)
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.body = nn.Sequential(
            net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.proj = nn.Identity() if dim == 128 else nn.Linear(128, dim)
        self.grid = grid
        self.pos_table: Tensor
        self.register_buffer("pos_table", sinusoid_table(grid * grid, dim), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        pix = x[:, :1].float() / 255.0  # (k, 1, p, p)
        pos = x[:, 1, 0, 0].long() * self.grid + x[:, 2, 0, 0].long()  # (k,)
        return self.proj(self.body(pix)) + self.pos_table[pos]  # (k, D)


def sinusoid_table(n: int, dim: int) -> Tensor:
    """(n, dim) fixed 1-D sinusoidal position encoding (Transformer style)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


def build_model(cfg: RunConfig) -> tuple[PatchEncoder, CrossAttentionAggregator]:
    tasks = tuple(TaskSpec(name, n, act) for name, n, act in TASKS)
    agg_cfg = AggregatorConfig(
        dim=cfg.dim, heads=cfg.heads, dim_head=cfg.dim_head, dim_inner=cfg.dim_inner,
        dropout=cfg.dropout, attn_dropout=cfg.attn_dropout, tasks=tasks,
    )  # fmt: skip
    return PatchEncoder(cfg.dim, cfg.size // cfg.patch), CrossAttentionAggregator(agg_cfg)


# ---- data -----------------------------------------------------------------------------------


class Canvases(torch.utils.data.Dataset):
    """Renders canvas i on demand: (patches (N, 3, p, p) uint8, {task: label})."""

    def __init__(self, split: str, n: int, cfg: RunConfig) -> None:
        self.geometry = CanvasConfig(cfg.size, cfg.patch, cfg.n_noise)
        self.images, labels = load_mnist(split)
        self.noise = noise_patterns(max(cfg.n_noise, 1), cfg.seed)
        self.specs = make_specs(n, labels, self.geometry, cfg.seed + (0 if split == "train" else 1))

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        spec = self.specs[i]
        canvas = render(spec, self.images, self.noise, self.geometry)
        patches = torch.from_numpy(to_patches(canvas, self.geometry.patch))
        return patches, {k: torch.as_tensor(v) for k, v in spec.labels().items()}


def collate(batch: list[Any]) -> tuple[list[Tensor], dict[str, Tensor]]:
    patches = [b[0] for b in batch]
    labels = {k: torch.stack([b[1][k] for b in batch]) for k in batch[0][1]}
    return patches, labels


# ---- steps ----------------------------------------------------------------------------------


def scan_and_forward(
    enc: PatchEncoder, agg: CrossAttentionAggregator, patches: list[Tensor], cfg: RunConfig,
    dev: torch.device, amp: torch.dtype | None, gen: torch.Generator | None,
) -> dict[str, Tensor]:  # fmt: skip
    """Per canvas: (patch drop,) IPS/DBPS scan in chunks of I; then one pass over B x M."""
    results, selected = [], []
    for p in patches:  # p: (N, 3, ps, ps) uint8 on the CPU
        keep = (
            random_patch_drop(p.shape[0], cfg.drop_ratio, gen)
            if gen is not None and cfg.drop_ratio > 0
            else torch.arange(p.shape[0])
        )
        chunks = ((keep[i : i + cfg.I], p[keep[i : i + cfg.I]]) for i in range(0, len(keep), cfg.I))
        if cfg.method == "dbps":
            res = dbps_scan(enc, agg, chunks, cfg.M, cfg.S, dev, amp)
        else:
            res = ips_scan(enc, agg, chunks, cfg.M, dev, amp)
        results.append(res)
        selected.append(p[res.indices.cpu()])  # (M', 3, ps, ps): re-read the selected pixels
    batch = collate_scan_results(results, cfg.M)
    tiles, mask = pad_batch(selected, cfg.M)  # (B, M, 3, ps, ps), (B, M)
    return gradient_pass(enc, agg, tiles, mask, batch.aux_emb, batch.aux_mask, amp)


def task_loss(logits: dict[str, Tensor], labels: dict[str, Tensor]) -> Tensor:
    """Mean over the tasks: cross-entropy (softmax tasks) or binary cross-entropy (multi)."""
    losses = []
    for name, _, act in TASKS:
        y = labels[name].to(logits[name].device)
        if act == "sigmoid":
            losses.append(F.binary_cross_entropy_with_logits(logits[name], y.float()))
        else:
            losses.append(F.cross_entropy(logits[name], y))
    return torch.stack(losses).mean()


def correct(logits: dict[str, Tensor], labels: dict[str, Tensor]) -> dict[str, float]:
    """Correct predictions per task summed over the batch (multi: per class, / 10 later)."""
    out = {}
    for name, n, act in TASKS:
        y = labels[name].to(logits[name].device)
        if act == "sigmoid":
            out[name] = float(((logits[name] > 0).float() == y).float().sum()) / n
        else:
            out[name] = float((logits[name].argmax(1) == y).sum())
    return out


def resolve(cfg: RunConfig) -> tuple[torch.device, torch.dtype | None]:
    dev = torch.device(
        "cuda" if cfg.device == "auto" and torch.cuda.is_available()
        else ("cpu" if cfg.device == "auto" else cfg.device)
    )  # fmt: skip
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and dev.type == "cuda")
    return dev, (torch.bfloat16 if bf16 else None)


def run(cfg: RunConfig) -> list[dict[str, Any]]:
    """Train and evaluate; returns (and appends to <out>/metrics.jsonl) one record per epoch."""
    torch.manual_seed(cfg.seed)
    dev, amp = resolve(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    enc, agg = build_model(cfg)
    enc.to(dev)
    agg.to(dev)
    params = [*enc.parameters(), *agg.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_set, test_set = Canvases("train", cfg.n_train, cfg), Canvases("test", cfg.n_test, cfg)
    loader_args: dict[str, Any] = dict(
        batch_size=cfg.batch_size, collate_fn=collate, num_workers=cfg.workers,
        persistent_workers=cfg.workers > 0,
    )  # fmt: skip
    g = torch.Generator().manual_seed(cfg.seed)
    train_dl = torch.utils.data.DataLoader(train_set, shuffle=True, generator=g, **loader_args)
    test_dl = torch.utils.data.DataLoader(test_set, shuffle=False, **loader_args)
    steps = len(train_dl)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, WarmupCosine(steps * cfg.epochs, steps * cfg.warmup_epochs, 1e-3)
    )
    drop_gen = torch.Generator().manual_seed(cfg.seed + 1)
    history = []
    for epoch in range(cfg.epochs):
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        enc.train()
        agg.train()
        total, seen = 0.0, 0
        for patches, labels in train_dl:
            logits = scan_and_forward(enc, agg, patches, cfg, dev, amp, drop_gen)
            loss = task_loss(logits, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(patches)
            seen += len(patches)
        train_s = time.perf_counter() - t0
        enc.eval()
        agg.eval()
        hits = {name: 0.0 for name, _, _ in TASKS}
        with torch.no_grad():
            for patches, labels in test_dl:
                logits = scan_and_forward(enc, agg, patches, cfg, dev, amp, None)
                for k, v in correct(logits, labels).items():
                    hits[k] += v
        rec = {
            "epoch": epoch + 1,
            "train_loss": total / seen,
            **{f"test_acc_{k}": v / len(test_set) for k, v in hits.items()},
            "train_seconds": round(train_s, 3),
            "seconds": round(time.perf_counter() - t0, 3),
            "lr": sched.get_last_lr()[0],
            "peak_host_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_gpu_mb": (
                round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
                if dev.type == "cuda"
                else None
            ),
        }
        history.append(rec)
        with (out / "metrics.jsonl").open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)
    torch.save(
        {"encoder": enc.state_dict(), "aggregator": agg.state_dict(),
         "config": dataclasses.asdict(cfg)},
        out / "model.pt",
    )  # fmt: skip
    return history


def parse_args(argv: list[str] | None = None) -> RunConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few small canvases on the CPU")
    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        parser.add_argument(flag, type=type(f.default), default=None, help=f"[{f.default}]")
    ns = vars(parser.parse_args(argv))
    values: dict[str, Any] = dict(SMOKE) if ns.pop("smoke") else {}
    values.update({k: v for k, v in ns.items() if v is not None})
    return RunConfig(**values)


if __name__ == "__main__":
    run(parse_args())
