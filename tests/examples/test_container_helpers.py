"""The pure parts of the podman fixture (tests/examples/container.py) and of the apptainer
stand-in, fast: the slow tests that use them run only where podman does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.examples import container as ct
from tests.workflow import apptainer_podman as shim


def test_apt_mirror_reads_deb822_and_one_line_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment: here\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\n\nTypes: deb-src\nURIs: http://src.example/debian\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n"
    )
    assert ct.apt_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text(
        "# deb http://old.example/debian bookworm main\n"
        "deb [signed-by=/k.gpg] http://one.example/debian/ bookworm main\n"
    )
    assert ct.apt_mirror(tmp_path) == "http://one.example/debian/"
    (tmp_path / "sources.list").write_text("deb http://ppa.example/ubuntu jammy main\n")
    assert ct.apt_mirror(tmp_path) is None


def test_local_dirs_mount_the_index_root(tmp_path: Path) -> None:
    (tmp_path / "idx" / "simple").mkdir(parents=True)
    (tmp_path / "wheels").mkdir()
    value = f"file://{tmp_path}/idx/simple {tmp_path}/wheels https://pypi.example/simple /nope"
    assert ct.local_dirs(value) == [tmp_path / "idx", tmp_path / "wheels"]


def test_pip_build_inputs_pass_the_index_as_secrets(tmp_path: Path) -> None:
    (tmp_path / "idx" / "simple").mkdir(parents=True)
    cert = tmp_path / "ca.pem"
    cert.write_text("not a real bundle\n")
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\nindex-url = file://{tmp_path}/idx/simple\ncert = {cert}\n")
    env = {**os.environ, "PIP_CONFIG_FILE": str(conf), "PIP_CERT": str(cert)}
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]); "
        "from tests.examples import container as ct; "
        "b = ct.pip_build_inputs(ct.Path(sys.argv[2])); print(json.dumps([b.args, b.conf]))"
    )
    res = subprocess.run([sys.executable, "-c", code, str(ct.Path(__file__).parents[2]),
                          str(tmp_path / "work")], env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    args, text = json.loads(res.stdout)
    assert f"index-url = file://{tmp_path}/idx/simple" in text
    assert "cert = /run/secrets/pip-cert" in text and str(cert) not in text
    assert f"id=pip-cert,src={cert}" in args
    assert f"id=pip.conf,src={tmp_path / 'work' / 'pip' / 'pip.conf'}" in args
    assert f"{tmp_path / 'idx'}:{tmp_path / 'idx'}:ro" in args  # a read-only build volume


def test_apptainer_stand_in_binds_and_refusals(capsys: pytest.CaptureFixture[str]) -> None:
    assert shim.binds("/a,/b:/c:ro,") == ["/a:/a:rw", "/b:/c:ro"]
    assert shim.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("apptainer version 1.")
    assert shim.main(["build", "x.sif", "docker://img"]) == 2
    assert shim.main(["exec", "--nv", "img", "sh"]) == 2
    assert "unsupported option --nv" in capsys.readouterr().err
