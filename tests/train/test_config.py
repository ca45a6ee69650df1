from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wsipipe.errors import ConfigError
from wsipipe.train.config import TrainConfig, load_train_config, preset_names, saved_run_fields
from wsipipe.train.model import amp_dtype_for


def test_defaults_follow_the_papers() -> None:
    cfg = TrainConfig()
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.epochs, cfg.warmup_epochs) == (
        3e-4,
        0.1,
        16,
        50,
        10.0,
    )
    assert cfg.min_lr_ratio == pytest.approx(1e-3)
    assert (cfg.dim, cfg.heads, cfg.dim_head, cfg.dim_inner) == (512, 8, 64, 2048)
    assert cfg.dropout == cfg.attn_dropout == 0.1
    assert cfg.method == "ips" and cfg.n_aux == 0


def test_presets_camelyon16() -> None:
    assert {"quickstart", "camelyon16-ips", "camelyon16-dbps"} <= set(preset_names())
    ips = load_train_config("camelyon16-ips")
    assert (ips.mode, ips.M, ips.I, ips.encoder, ips.batch_size) == (
        "features",
        5000,
        5000,
        "resnet50",
        16,
    )
    assert (ips.lr, ips.weight_decay, ips.epochs, ips.warmup_epochs) == (3e-4, 0.1, 50, 10)
    dbps = load_train_config("camelyon16-dbps")
    assert (dbps.method, dbps.M, dbps.I, dbps.S, dbps.n_aux) == ("dbps", 100, 500, 400, 400)
    quick = load_train_config("quickstart")
    assert quick.pretrained is False and quick.mode == "pixels" and quick.epochs <= 14


def test_cli_overrides_yaml_overrides_defaults(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("M: 7\nI: 9\nmethod: dbps\nS: 3\nclasses: [b, a]\n")
    cfg = load_train_config(y, {"I": 11, "lr": None, "classes": "x,y,z"})
    assert (cfg.M, cfg.I, cfg.method, cfg.S, cfg.lr) == (7, 11, "dbps", 3, 3e-4)
    assert cfg.classes == ("x", "y", "z")


@pytest.mark.parametrize(
    ("overrides", "word"),
    [
        ({"M": 0}, "`M`"),
        ({"drop_ratio": 1.0}, "drop_ratio"),
        ({"method": "dbps", "S": 0}, "`S`"),
        ({"method": "xyz"}, "method"),
        ({"precision": "int8"}, "precision"),
        ({"device": "tpu"}, "device"),
        ({"warmup_epochs": 60}, "warmup_epochs"),
        ({"classes": "a,a"}, "classes"),
        ({"input_px": 4}, "input_px"),
        ({"bogus": 1}, "bogus"),
        ({"instance_loss": -1}, "instance_loss"),
        ({"feature_norm": "batch"}, "feature_norm"),
    ],
)
def test_bad_values_are_config_errors(overrides: dict[str, object], word: str) -> None:
    with pytest.raises(ConfigError, match=word) as err:
        load_train_config(None, overrides)
    assert "\n" not in str(err.value)


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="no such preset"):
        load_train_config("no-such-preset")


def test_precision() -> None:
    cpu = torch.device("cpu")
    assert amp_dtype_for("auto", cpu) is None  # bf16 selection on CPU: test_reduced_decode
    assert amp_dtype_for("bf16", cpu) is torch.bfloat16
    assert amp_dtype_for("fp32", cpu) is None
    assert amp_dtype_for("auto", torch.device("cuda", 0)) is torch.bfloat16
    with pytest.raises(ConfigError, match="fp16"):
        amp_dtype_for("fp16", cpu)


def test_runs_saved_before_feature_norm_and_instance_loss_keep_their_model(tmp_path: Path) -> None:
    """A run's config saved before these fields existed rebuilds the model it trained
    (LayerNorm + BatchNorm, no instance head), on resume and from its checkpoint; a user's
    own YAML without them gets the current defaults."""
    from wsipipe.config import config_to_dict
    from wsipipe.train.runs import check_resume_config

    old = {k: v for k, v in config_to_dict(TrainConfig()).items()
           if k not in ("feature_norm", "instance_loss")}  # fmt: skip
    fields = saved_run_fields({**old, "_classes": ["a", "b"]})
    assert fields["feature_norm"] == "layer-batch" and fields["instance_loss"] == 0.0
    assert "_classes" not in fields
    assert saved_run_fields({"feature_norm": "standard"})["feature_norm"] == "standard"
    check_resume_config(old, TrainConfig(), tmp_path / "last.pt")  # no "changed settings"
    with pytest.raises(ConfigError, match="instance_loss"):
        check_resume_config(old, TrainConfig(instance_loss=1.0), tmp_path / "last.pt")


def test_a_config_extends_a_preset_or_another_file(tmp_path) -> None:
    """`extends:` takes the named config and lays the file's own fields over it: the
    features-offline-abmil preset differs from features-offline in exactly four fields."""
    import dataclasses

    base = load_train_config("features-offline")
    abmil = load_train_config("features-offline-abmil")
    changed = {
        f.name: getattr(abmil, f.name)
        for f in dataclasses.fields(base)
        if getattr(base, f.name) != getattr(abmil, f.name)
    }
    assert changed == {"method": "abmil", "encoder": "efficientnet-lite0-s23",
                       "feature_norm": "standard", "restarts": 3}  # fmt: skip
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: features-offline-abmil\nlr: 0.001\n")
    cfg = load_train_config(mine)
    assert (cfg.lr, cfg.method, cfg.dim) == (0.001, "abmil", base.dim)  # two levels deep
    loop_a, loop_b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    loop_a.write_text(f"extends: {loop_b}\n")
    loop_b.write_text(f"extends: {loop_a}\n")
    with pytest.raises(ConfigError, match="loops"):
        load_train_config(loop_a)
