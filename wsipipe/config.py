"""Stage configs: frozen dataclasses filled from defaults, then a YAML file, then CLI options.

Each stage defines one frozen dataclass (``TileConfig``, ``TrainConfig``, ...). The CLI and a
YAML file fill the same fields; precedence is CLI > YAML > dataclass default. Nested
dataclasses (e.g. ``TileConfig.tissue``) are nested mappings in YAML. The resolved config is
saved as YAML beside every output, and its hash tells a re-run whether old outputs are
still valid for the current settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from wsipipe.errors import ConfigError
from wsipipe.fileio import atomic_write_text

T = TypeVar("T")

#: Autocast precision of the encoder; auto = bf16 on CUDA, fp32 on CPU except the training
#: scan's tile selection, bf16 on CPUs with native bf16 arithmetic (:func:`cpu_has_bf16`).
Precision = Literal["auto", "bf16", "fp16", "fp32"]

#: /proc/cpuinfo flags of native bf16 matrix arithmetic: x86 AVX512-BF16 / AMX-BF16, Arm
#: BF16 (FEAT_BF16). Without them torch emulates bf16 on the CPU, which is slower than fp32.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


def cpu_has_bf16(flags: Iterable[str]) -> bool:
    """Whether a CPU with these /proc/cpuinfo ``flags`` (x86) or ``Features`` (Arm) runs
    bf16 autocast natively (so `--precision auto` picks bf16 on it)."""
    return not BF16_CPU_FLAGS.isdisjoint(flags)


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of the first CPU in a /proc/cpuinfo text (empty if none listed)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(device: str, stage: str) -> None:
    """``device`` is auto, cpu, cuda or cuda:N, else a ConfigError naming the option."""
    if not _DEVICE_RE.match(device):
        raise ConfigError(
            f"{stage} config: `device` = {device!r} must be auto, cpu, cuda or cuda:N; fix "
            "--device or the YAML"
        )


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain JSON/YAML-serialisable dict of a (nested) config dataclass."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"expected a dataclass instance, got {type(cfg).__name__}")
    return {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def config_hash(cfg: Any) -> str:
    """Stable short hash of a config's content (sorted-key JSON)."""
    blob = json.dumps(config_to_dict(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; bad YAML or a non-mapping is a ConfigError naming the file."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found; check the --config path") from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ConfigError(f"{p}: invalid YAML{where}; fix the syntax of the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of field: value at the top level")
    return data


def build_config(
    cls: type[T],
    yaml_data: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    source: str = "config",
) -> T:
    """Defaults <- ``yaml_data`` <- ``overrides`` (entries whose value is None are ignored).

    Override keys may address nested fields with dots (``tissue.thumb_mpp``). Unknown keys
    are a ConfigError that lists the valid ones.
    """
    merged: dict[str, Any] = dict(yaml_data or {})
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        node = merged
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return _from_mapping(cls, merged, source, prefix="")


def _from_mapping(cls: type[T], data: Mapping[str, Any], source: str, prefix: str) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: `{prefix.rstrip('.')}` must be a mapping of field: value")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        valid = ", ".join(prefix + name for name in fields)
        bad = ", ".join(prefix + str(u) for u in unknown)
        raise ConfigError(f"{source}: unknown field(s) {bad}; valid fields are: {valid}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, source, prefix + name)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def coerce_fields(obj: Any, error: type[Exception], hint: str) -> None:
    """Coerce every field of a (frozen) dataclass instance to its annotated type in place --
    the one coercion of wsipipe, for configs and records read back from files alike; a bad
    value raises ``error`` with the field's message and ``hint`` (what to do)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        try:
            value = _coerce(hints[f.name], getattr(obj, f.name), "", f.name)
        except ConfigError as exc:
            raise error(f"{type(obj).__name__}{exc}; {hint}") from None
        object.__setattr__(obj, f.name, value)


def _coerce(tp: Any, value: Any, source: str, name: str) -> Any:
    """Convert a YAML/CLI value to the annotated field type, or raise a ConfigError."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, source, name)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{source}: bad value for `{name}`")
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        return _from_mapping(tp, value, source, prefix=name + ".")  # type: ignore[arg-type]
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: `{name}` must be a list, got {value!r}")
        if args and Ellipsis not in args:  # fixed length: tuple[float, float]
            if len(value) != len(args):
                raise ConfigError(f"{source}: `{name}` must hold {len(args)} values, got {value!r}")
            return tuple(_coerce(t, v, source, name) for t, v in zip(args, value, strict=True))
        item_type = args[0] if args else Any
        return tuple(_coerce(item_type, v, source, name) for v in value)
    if origin is typing.Literal:
        if value not in args:
            choices = ", ".join(map(str, args))
            raise ConfigError(f"{source}: `{name}` = {value!r} is not one of: {choices}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{source}: `{name}` must be true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{source}: `{name}` must be a number, got {value!r}")
        try:
            number = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: `{name}` must be a number, got {value!r}") from None
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{source}: `{name}` must be a whole number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{source}: `{name}` must be a string, got {value!r}")
        return str(value)
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: `{name}` must be a mapping, got {value!r}")
        return dict(value)
    return value


def save_config(cfg: Any, path: str | Path, extra: Mapping[str, Any] | None = None) -> None:
    """Save the resolved config as YAML (atomically), with optional extra top-level keys.

    A file that already holds exactly this is left alone (a re-run on a full disk then gets
    as far as its per-slide work, each slide reporting the full disk)."""
    data = config_to_dict(cfg)
    if extra:
        data = {**dict(extra), **data}
    text = yaml.safe_dump(data, sort_keys=False)
    try:
        if Path(path).read_text(encoding="utf-8") == text:
            return
    except (OSError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text)
