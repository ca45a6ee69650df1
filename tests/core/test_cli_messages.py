"""Every command-line option a message of wsipipe names is a real option of its commands.

Options are derived from the config dataclasses (:mod:`wsipipe.cli_config`), so a message
that spells one by hand (``--warmup_epochs`` for ``--warmup-epochs``) or names a field that is
YAML-only sends the user to an option that does not exist. The test reads every string in the
package (messages, help texts, docstrings shown as command help) and the messages built from
field names, and checks each ``--option`` against the typer app.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import pytest
import typer

from wsipipe.cli import app
from wsipipe.cli_config import bad_value, option_flag

PKG = Path(__file__).resolve().parents[2] / "wsipipe"
OPTION = re.compile(r"(?<![\w-])--[A-Za-z][A-Za-z0-9_-]*")
# options of other programs that messages tell the user to run, with the program's name
EXTERNAL = {"--nproc_per_node": "torchrun", "--force-reinstall": "pip",
            "--local-dir": "hf download"}  # fmt: skip
# cli_config builds the options: its docstring shows placeholders (--field-name, --x/--no-x)
SKIP = {PKG / "cli_config.py"}


def _options(command: Any) -> set[str]:
    out = {"--help"}
    for p in command.params:
        out |= {o for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}
    return out


def _commands() -> dict[str, Any]:
    root = typer.main.get_command(app)
    found = {"": root}
    stack = [("", root)]
    while stack:
        name, cmd = stack.pop()
        for sub_name, sub in getattr(cmd, "commands", {}).items():
            key = f"{name} {sub_name}".strip()
            found[key] = sub
            stack.append((key, sub))
    return found


COMMANDS = _commands()
ALL_OPTIONS = set().union(*(_options(c) for c in COMMANDS.values()))


def _strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string constant, f-string pieces included."""
    tree = ast.parse(path.read_text())
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]


def unknown_options(texts: list[str]) -> list[str]:
    bad = []
    for text in texts:
        for flag in OPTION.findall(text):
            if flag in ALL_OPTIONS:
                continue
            if flag in EXTERNAL and EXTERNAL[flag] in text:
                continue
            bad.append(flag)
    return bad


def test_the_check_catches_a_misspelt_option() -> None:
    assert unknown_options(["fix --warmup_epochs or the YAML"]) == ["--warmup_epochs"]
    assert unknown_options(["fix --warmup-epochs or the YAML", "torchrun --nproc_per_node"]) == []
    assert unknown_options(["pass --nproc_per_node 2"]) == ["--nproc_per_node"]  # whose?


def test_every_option_named_in_the_package_exists() -> None:
    bad = [
        f"{path.relative_to(PKG)}:{line}: {flag}"
        for path in sorted(PKG.rglob("*.py"))
        if path not in SKIP
        for line, text in _strings(path)
        for flag in unknown_options([text])
    ]
    assert not bad, "\n".join(bad)


def _config_keys(cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += _config_keys(hints[f.name], prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def _stage_configs() -> list[tuple[str, str, type]]:
    from wsipipe.heatmap.config import HeatmapConfig
    from wsipipe.tile.config import TileConfig
    from wsipipe.train.config import TrainConfig

    return [("tile", "tile", TileConfig), ("train", "train", TrainConfig),
            ("heatmap", "heatmap", HeatmapConfig)]  # fmt: skip


@pytest.mark.parametrize(("stage", "command", "cls"), _stage_configs())
def test_field_messages_name_the_commands_own_options(stage: str, command: str, cls: type):
    """A bad value of any field names its option (or the YAML) -- an option of the command
    that takes the field, spelt as the CLI spells it."""
    options = _options(COMMANDS[command])
    for key in _config_keys(cls):
        flag = option_flag(cls, key)
        msg = str(bad_value(stage, cls, key, 0, "is wrong"))
        named = OPTION.findall(msg)
        if flag is None:
            assert named == [] and "fix it in the YAML" in msg, key
        else:
            assert named == [flag] and flag in options, (key, msg)


def test_the_warmup_message_names_the_real_option() -> None:
    from wsipipe.errors import ConfigError
    from wsipipe.train.config import TrainConfig

    with pytest.raises(ConfigError) as err:
        TrainConfig(epochs=2, warmup_epochs=5)
    assert "fix --warmup-epochs or the YAML" in str(err.value)
    assert "--warmup-epochs" in _options(COMMANDS["train"])
