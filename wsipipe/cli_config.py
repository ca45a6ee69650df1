"""Command-line options derived from a stage's config dataclass: type, default and help once.

A config field is declared with :func:`opt` -- ``M: int = opt(32, "tiles with gradients per
slide", flag="--M")`` -- and :func:`config_options` turns every field of the dataclass into a
typer option of the command it decorates: ``--field-name`` (or ``flag``), the field's type
(bools as ``--x/--no-x``, Literals as choices, tuples as comma-separated or repeated values),
and the help text with the dataclass default. Every option defaults to None, so that the
``--config`` YAML (or preset) and then the dataclass default apply: precedence CLI > YAML >
default (:func:`wsipipe.config.build_config`). Fields of a nested config dataclass become
options too (``--tissue-closing-um`` for ``tissue.closing_um``). The decorated function gets
the options that were given as one ``overrides`` mapping of (dotted) field names.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, Field, dataclass
from typing import Annotated, Any, TypeVar

from wsipipe.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])


def opt(
    default: Any = MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    shown: str | None = None,
    factory: Callable[[], Any] | None = None,
    cli: bool = True,
) -> Any:
    """A config field with its command-line help. ``flag`` overrides the option name,
    ``shown`` the default as the help prints it; ``cli=False`` keeps it off the command line
    (YAML only)."""
    meta = {"help": help, "flag": flag, "shown": shown, "cli": cli}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class _Option:
    param: str  # python parameter name of the generated option
    key: str  # (dotted) config field name
    multiple: bool  # a tuple field: repeated / comma-separated values are flattened


def _default_text(f: Field[Any]) -> str:
    shown = f.metadata.get("shown")
    if shown is not None:
        return str(shown)
    factory: Any = f.default_factory
    value = f.default if f.default is not MISSING else factory()
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or value == "" or value == ():
        return "none"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def _flag(f: Field[Any], prefix: str) -> str:
    """The option name of field ``f`` (``prefix``: its parents' names joined by "_")."""
    return f.metadata.get("flag") or "--" + (prefix + f.name).replace("_", "-")


def option_flag(cls: type, key: str) -> str | None:
    """The command-line option of config field ``key`` of ``cls`` (dotted for a nested field:
    ``tissue.closing_um`` -> ``--tissue-closing-um``), or None when it is YAML-only
    (``cli=False``): what an error message names as the fix. KeyError for no such field."""
    *parents, leaf = key.split(".")
    for part in parents:
        f = {f.name: f for f in dataclasses.fields(cls)}[part]
        if not f.metadata.get("cli", True):
            return None
        cls = typing.get_type_hints(cls)[part]
    f = {f.name: f for f in dataclasses.fields(cls)}[leaf]
    if not f.metadata.get("cli", True):
        return None
    return _flag(f, "".join(p + "_" for p in parents))


def bad_value(stage: str, cls: type, key: str, value: Any, why: str) -> ConfigError:
    """The one-line error for a bad config value: the field, the value, why, and the option
    (or the YAML) that fixes it."""
    flag = option_flag(cls, key)
    fix = f"fix {flag} or the YAML" if flag else "fix it in the YAML"
    return ConfigError(f"{stage} config: `{key}` = {value!r} {why}; {fix}")


def _option(f: Field[Any], tp: Any, param: str, prefix: str) -> tuple[inspect.Parameter, bool]:
    """The typer parameter for field ``f`` of (resolved) type ``tp``; (parameter, multiple)."""
    import typer

    flag = _flag(f, prefix)
    text = f.metadata.get("help", "")
    help_text = f"{text} (default: {_default_text(f)})" if text else f"default: {_default_text(f)}"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # X | None: the option takes an X
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    multiple = False
    ann: Any
    kwargs: dict[str, Any] = {"help": help_text}
    if tp is bool:
        decls, ann = [f"{flag}/--no-{flag[2:]}"], bool
    elif origin is typing.Literal:  # typer offers the choices
        decls, ann = [flag], tp
    elif origin is tuple:
        decls, ann, multiple = [flag], list[str], True
        kwargs["help"] = help_text + "; comma-separated or repeated"
    elif tp in (int, float, str):
        decls, ann = [flag], tp
    else:
        raise TypeError(f"config field {prefix}{f.name}: no command-line type for {tp!r}")
    option = typer.Option(*decls, **kwargs)
    annotation = Annotated[ann | None, option]
    param_ = inspect.Parameter(
        param, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
    )
    return param_, multiple


def _field_options(
    cls: type, only: Iterable[str] | None, exclude: Iterable[str], prefix: str = ""
) -> list[tuple[inspect.Parameter, _Option]]:
    hints = typing.get_type_hints(cls)
    out: list[tuple[inspect.Parameter, _Option]] = []
    only_set = set(only) if only is not None else None
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if key in exclude or not f.metadata.get("cli", True):
            continue
        if (
            only_set is not None
            and key not in only_set
            and not dataclasses.is_dataclass(hints[f.name])
        ):
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += _field_options(tp, only, exclude, prefix=key + ".")  # type: ignore[arg-type]
            continue
        param = key.replace(".", "__")
        nested_prefix = prefix.replace(".", "_") if prefix else ""
        parameter, multiple = _option(f, tp, param, nested_prefix)
        out.append((parameter, _Option(param, key, multiple)))
    return out


def config_options(
    cls: type, *, only: Iterable[str] | None = None, exclude: Iterable[str] = ()
) -> Callable[[F], F]:
    """Decorate a typer command function that takes ``overrides: dict[str, Any]``: add an
    option for every field of config dataclass ``cls`` (or the fields ``only``, without
    ``exclude``); the function receives the ones given, by (dotted) field name."""

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != "overrides"]
        names = {p.name for p in own}
        generated = [(p, o) for p, o in _field_options(cls, only, exclude) if o.param not in names]
        options = [o for _, o in generated]

        def command(**kwargs: Any) -> Any:
            overrides: dict[str, Any] = {}
            for o in options:
                value = kwargs.pop(o.param, None)
                if value is None:
                    continue
                if o.multiple:  # repeated and/or comma-separated values, flattened
                    value = [v.strip() for item in value for v in str(item).split(",")]
                    value = [v for v in value if v]
                overrides[o.key] = value
            return fn(**kwargs, overrides=overrides)

        params = own + [p for p, _ in generated]
        command.__name__ = fn.__name__
        command.__qualname__ = fn.__qualname__
        command.__doc__ = fn.__doc__
        command.__module__ = fn.__module__
        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command  # type: ignore[return-value]

    return decorate
