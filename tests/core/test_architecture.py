"""Imports run downhill: each package imports only the layers below it (read from the
source, imports inside functions included), and the heatmap uses nothing of the training
stage but its public inference API."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "wsipipe"

# lower number = lower layer; a module may import its own package and lower layers only
LAYER = {
    "errors": 0, "lazy": 0, "fileio": 1, "config": 2, "cli_config": 2, "stats": 2, "jobs": 2,
    "slide": 3, "geometry": 3, "models": 3,
    "store": 4, "encoders": 4, "tile": 5, "labels": 6, "synth": 7, "train": 7, "heatmap": 8,
    "cli": 9, "__main__": 10, "__init__": 0, "testing": 10,
}  # fmt: skip


def _imports(path: Path) -> list[str]:
    out: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("wsipipe"):
            out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("wsipipe")]
    return out


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _modules() -> list[tuple[str, Path]]:
    return [(p.relative_to(PKG).parts[0].removesuffix(".py"), p) for p in PKG.rglob("*.py")]


def test_every_package_has_a_layer() -> None:
    assert {top for top, _ in _modules()} <= set(LAYER)


def test_imports_run_downhill() -> None:
    bad = []
    for top, path in _modules():
        if path.name == "__main__.py":
            continue  # `python -m wsipipe.<pkg>` entry points call the CLI
        for mod in _imports(path):
            target = _top(mod)
            if target != top and LAYER[target] >= LAYER[top] and target != "__init__":
                bad.append(f"{path.relative_to(PKG)} imports {mod}")
    assert not bad, "\n".join(bad)


def test_heatmap_uses_only_the_public_inference_api_of_train() -> None:
    used = {
        mod
        for path in (PKG / "heatmap").rglob("*.py")
        for mod in _imports(path)
        if mod.startswith("wsipipe.train")
    }
    assert used == {"wsipipe.train.inference"}


def test_no_pipeline_module_imports_the_test_support() -> None:
    users = [
        str(p.relative_to(PKG))
        for top, p in _modules()
        if top != "testing" and any(m.startswith("wsipipe.testing") for m in _imports(p))
    ]
    assert not users
