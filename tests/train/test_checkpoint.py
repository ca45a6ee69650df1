from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from wsipipe.errors import ConfigError
from wsipipe.train.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint


def test_roundtrip_weights_only(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": 3,
        "config": {"M": 5, "classes": ["a", "b"], "fold": None},
        "rng": capture_rng(),
    }
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint(path, state)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind
    ck = load_checkpoint(path)
    assert ck["epoch"] == 3 and ck["config"]["classes"] == ["a", "b"]
    assert torch.equal(ck["model"]["weight"], model.weight.detach())
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.1)
    opt2.load_state_dict(ck["optimizer"])
    torch.load(path, weights_only=True)  # loads with the safe unpickler


def test_rng_states_restore_exactly() -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    st = capture_rng()
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(st)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_bad_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"junk\.pt"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"model": {}}, other)
    with pytest.raises(ConfigError, match="not a wsipipe"):
        load_checkpoint(other)


class _RunsCode:
    """Unpickling this would call os.system (what torch.load(weights_only=True) refuses)."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("echo this must never run",))


def test_a_pickle_that_runs_code_is_refused_as_unsafe_in_one_line(tmp_path: Path) -> None:
    from wsipipe.encoders.weights import read_state_dict
    from wsipipe.errors import EncoderWeightsError

    evil = tmp_path / "evil.pt"
    torch.save({"format": "wsipipe-train-1", "model": _RunsCode()}, evil)
    with pytest.raises(ConfigError) as err:
        load_checkpoint(evil)
    msg = str(err.value)
    assert msg.startswith(f"{evil}: refused as unsafe:") and "(posix.system)" in msg
    assert "weights_only" not in msg and "\n" not in msg and len(msg) < len(str(evil)) + 160
    with pytest.raises(EncoderWeightsError) as enc_err:  # encoder weights: the same refusal
        read_state_dict(evil, "resnet18")
    enc_msg = str(enc_err.value)
    assert "refused as unsafe" in enc_msg and "weights_only" not in enc_msg
    junk = tmp_path / "junk.pt"  # not a pickle at all: unreadable, not unsafe
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError) as junk_err:
        load_checkpoint(junk)
    junk_msg = str(junk_err.value)
    assert "cannot load checkpoint" in junk_msg and "Unsupported operand" in junk_msg
    assert "weights_only" not in junk_msg and "unsafe" not in junk_msg


def test_weights_that_do_not_fit_the_config_are_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from tests.heatmap import synth
    from wsipipe.cli import app
    from wsipipe.train.inference import load_model

    ck = synth.make_checkpoint(tmp_path / "ck.pt")
    state = torch.load(ck, weights_only=True)
    name = next(k for k, v in state["model"].items() if v.ndim == 2)
    rows, cols = state["model"][name].shape
    state["model"][name] = torch.zeros(rows + 1, cols)
    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, {k: v for k, v in state.items() if k != "format"})
    with pytest.raises(ConfigError) as err:
        load_model(bad, "cpu")
    msg = str(err.value)
    assert msg.startswith(f"{bad}: the checkpoint's weights do not fit the model")
    assert f"1 of another shape ({name}: ({rows + 1}, {cols}) in the file, ({rows}, {cols}) " in msg
    assert "\n" not in msg and "size mismatch" not in msg
    result = CliRunner().invoke(app, ["predict", "--checkpoint", str(bad), "--stores",
                                      str(tmp_path), "--out", str(tmp_path / "p")])  # fmt: skip
    assert isinstance(result.exception, ConfigError)  # printed as one line by wsipipe.cli.main
    assert "weights do not fit" in str(result.exception)
