from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from wsipipe.config import build_config, config_hash, config_to_dict, load_yaml, save_config
from wsipipe.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    a: float = 1.0
    names: tuple[str, ...] = ("x",)


@dataclass(frozen=True)
class Outer:
    n: int = 3
    flag: bool = False
    label: str | None = None
    inner: Inner = field(default_factory=Inner)


def test_precedence_defaults_yaml_cli():
    cfg = build_config(Outer, {"n": 5, "inner": {"a": 2}}, {"n": 7, "inner.names": "p, q"})
    assert cfg.n == 7  # CLI beats YAML
    assert cfg.inner.a == 2.0 and isinstance(cfg.inner.a, float)  # YAML int coerced to float
    assert cfg.inner.names == ("p", "q")
    assert cfg.flag is False and cfg.label is None  # defaults kept


def test_none_override_means_not_given():
    assert build_config(Outer, {"n": 5}, {"n": None}).n == 5


def test_unknown_field_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown field\(s\) inner\.b.*inner\.a, inner\.names"):
        build_config(Outer, {"inner": {"b": 1}}, source="my.yaml")


@pytest.mark.parametrize(
    ("data", "msg"),
    [({"n": "many"}, r"`n` must be a number"), ({"n": 2.5}, "whole number"),
     ({"flag": "perhaps"}, "true or false")],
)  # fmt: skip
def test_bad_values_name_the_field(data, msg):
    with pytest.raises(ConfigError, match=msg):
        build_config(Outer, data)


def test_yaml_round_trip_and_hash(tmp_path):
    cfg = build_config(Outer, {"n": 9, "inner": {"names": ["a", "b"]}})
    path = tmp_path / "c.yaml"
    save_config(cfg, path, extra={"version": "x"})
    data = load_yaml(path)
    assert data["version"] == "x"
    data.pop("version")
    assert build_config(Outer, data) == cfg
    assert config_hash(cfg) == config_hash(build_config(Outer, data))
    assert config_hash(cfg) != config_hash(Outer())
    assert config_to_dict(cfg)["inner"]["names"] == ["a", "b"]


def test_unchanged_config_is_not_rewritten(tmp_path):
    cfg = build_config(Outer, {"n": 9})
    path = tmp_path / "c.yaml"
    save_config(cfg, path, extra={"version": "x"})
    inode = path.stat().st_ino  # a rewrite renames a new file over it: another inode
    save_config(cfg, path, extra={"version": "x"})
    assert path.stat().st_ino == inode
    save_config(build_config(Outer, {"n": 10}), path)
    assert path.stat().st_ino != inode and load_yaml(path)["n"] == 10


def test_bad_yaml_is_one_line_error(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("n: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML"):
        load_yaml(p)
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")
