"""Podman fixture logic for tests/examples/test_container.py: a local base image with Python
made from a debootstrapped Debian root file system (no image registry is needed), the
project's Dockerfile built on it with this machine's pip index passed in as build secrets, and
`podman run` of the built image.

Root podman with the runc runtime and the cgroupfs cgroup manager (crun refuses here with
`setrlimit ... Operation not permitted` and "cgroups in hybrid mode not supported"), its own
storage under WORK so that nothing else's images are touched. The root file system, the base
image and podman's layer cache stay in WORK between runs, so a re-run does not debootstrap
or reinstall torch again (set WSIPIPE_PODMAN_DIR to move it; it needs about 5 GB).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

WORK = Path(os.environ.get("WSIPIPE_PODMAN_DIR", "/var/tmp/wsipipe-podman"))
SUITE = "bookworm"
BASE_TAG = f"localhost/wsipipe-test-base:{SUITE}"
IMAGE_TAG = "localhost/wsipipe:test"
CONTAINERS_CONF = '[containers]\ndefault_ulimits = []\n\n[engine]\ncgroup_manager = "cgroupfs"\n'
# pip settings carried into the build: values, and the ones that name a file (-> a secret)
PIP_KEYS = ("index-url", "extra-index-url", "find-links", "trusted-host", "timeout",
            "default-timeout", "retries")  # fmt: skip
PIP_FILE_SECRETS = {"cert": "pip-cert", "client-cert": "pip-client-cert"}


def unavailable_reason() -> str | None:
    """Why podman cannot build and run the image here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return f"podman test needs Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return "podman test runs root podman (rootless needs subuid ranges); run it as root"
    missing = [t for t in ("podman", "runc", "debootstrap", "tar") if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install podman runc debootstrap)"
    if apt_mirror() is None:
        return "no Debian mirror in /etc/apt/sources.list* to debootstrap the base from"
    return None


def apt_mirror(root: Path = Path("/etc/apt")) -> str | None:
    """The first Debian archive URI this machine's apt uses (not the security archive)."""
    uris: list[str] = []
    for src in sorted((root / "sources.list.d").glob("*.sources")):
        for stanza in src.read_text().split("\n\n"):
            fields = dict(
                (k.strip().lower(), v.strip())
                for k, _, v in (ln.partition(":") for ln in stanza.splitlines())
                if not k.startswith("#") and v
            )
            if "deb" in fields.get("types", "").split():
                uris += fields.get("uris", "").split()
    plain = root / "sources.list"
    if plain.exists():
        for line in plain.read_text().splitlines():
            m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)", line)
            if m:
                uris.append(m.group(1))
    for uri in uris:
        if uri.rstrip("/").endswith("/debian"):
            return uri
    return None


@dataclass
class Podman:
    """Root podman with its own storage and configuration under `work`."""

    work: Path = WORK
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        conf = self.work / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def argv(self, *args: str) -> list[str]:
        return ["podman", "--root", str(self.work / "storage"), "--runroot",
                str(self.work / "run"), "--runtime", "runc", "--cgroup-manager", "cgroupfs",
                *args]  # fmt: skip

    def __call__(self, *args: str, timeout: float = 600, check: bool = True):
        res = subprocess.run(self.argv(*args), capture_output=True, text=True,
                             timeout=timeout, env=self.env)  # fmt: skip
        if check and res.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} -> {res.returncode}\n"
                                 f"{res.stdout[-4000:]}\n{res.stderr[-4000:]}")  # fmt: skip
        return res


def ensure_rootfs(work: Path = WORK) -> Path:
    """A minimal Debian root file system with python3 and venv (cached in work/rootfs)."""
    rootfs = work / "rootfs"
    if (work / "rootfs.ok").exists() and (rootfs / "usr/bin/python3").exists():
        return rootfs
    tmp = work / "rootfs.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(rootfs, ignore_errors=True)
    mirror = apt_mirror()
    assert mirror is not None
    cmd = ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
           SUITE, str(tmp), mirror]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if res.returncode != 0:
        raise AssertionError(f"debootstrap failed: {res.stdout[-3000:]}{res.stderr[-2000:]}")
    tmp.rename(rootfs)
    (work / "rootfs.ok").write_text(mirror + "\n")
    return rootfs


def ensure_base(podman: Podman, rootfs: Path) -> str:
    """The root file system imported as a local image (again when the root file system is
    newer than the image)."""
    stamp = podman.work / "base.ok"
    if podman("image", "exists", BASE_TAG, check=False).returncode == 0:
        if stamp.exists() and stamp.stat().st_mtime >= (podman.work / "rootfs.ok").stat().st_mtime:
            return BASE_TAG
        podman("rmi", "--force", BASE_TAG)
    tar = podman.work / "rootfs.tar"
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True, timeout=600)
    try:
        podman("import", str(tar), BASE_TAG, timeout=600)
    finally:
        tar.unlink(missing_ok=True)
    stamp.write_text(BASE_TAG + "\n")
    return BASE_TAG


def pip_settings() -> dict[str, str]:
    """This machine's pip configuration (`pip config list`: files, then PIP_* variables)."""
    res = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    files: dict[str, str] = {}
    env: dict[str, str] = {}
    for line in res.stdout.splitlines():
        m = re.match(r"(\S+?)\.([\w-]+)='(.*)'$", line.strip())
        if m:
            (env if m.group(1) == ":env:" else files)[m.group(2)] = m.group(3)
    return {**files, **env}


def local_dirs(value: str) -> list[Path]:
    """The folders on this machine that pip URLs / paths in `value` point at."""
    out = []
    for item in value.split():
        path = item[len("file://") :] if item.startswith("file://") else item
        if path.startswith("/") and Path(path).exists():
            p = Path(path)
            # a local index (root/simple/<name>/index.html) links to ../../files: mount root
            out.append(p.parent if p.name == "simple" else p)
    return out


def torch_pins() -> list[str]:
    """torch and torchvision pinned to this interpreter's pair: its wheels are in the index
    this machine's pip uses, and the two fit each other. (A CPU torch wheel alone is not
    enough: PyPI's torchvision is a CUDA build, and on CPU torch it fails at import with
    "operator torchvision::nms does not exist".)"""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in ("torch", "torchvision"):
        with contextlib.suppress(PackageNotFoundError):
            pins.append(f"{name}=={version(name)}")
    return pins


@dataclass
class BuildInputs:
    args: list[str]  # podman build arguments: --secret, --volume
    conf: str  # the pip.conf handed in (for the report)
    pins: list[str]


def pip_build_inputs(work: Path) -> BuildInputs:
    """This machine's pip index as build secrets (pip.conf, CA bundle, constraints) and the
    local index folders as read-only build volumes: nothing of it lands in a layer."""
    settings = pip_settings()
    pipdir = work / "pip"
    pipdir.mkdir(parents=True, exist_ok=True)
    lines = ["[global]"]
    args: list[str] = []
    dirs: list[Path] = []
    for key in PIP_KEYS:
        if key in settings:
            lines.append(f"{key} = {settings[key]}")
            if key in ("index-url", "extra-index-url", "find-links"):
                dirs += local_dirs(settings[key])
    for key, sid in PIP_FILE_SECRETS.items():
        if key in settings and Path(settings[key]).is_file():
            args += ["--secret", f"id={sid},src={settings[key]}"]
            lines.append(f"{key} = /run/secrets/{sid}")
    constraints = []
    if "constraint" in settings and Path(settings["constraint"]).is_file():
        constraints.append(Path(settings["constraint"]).read_text())
    pins = torch_pins()
    constraints += [pin + "\n" for pin in pins]
    if constraints:
        (pipdir / "constraints.txt").write_text("".join(constraints))
        args += ["--secret", f"id=pip-constraints,src={pipdir / 'constraints.txt'}"]
        lines.append("constraint = /run/secrets/pip-constraints")
    conf = "\n".join(lines) + "\n"
    (pipdir / "pip.conf").write_text(conf)
    args += ["--secret", f"id=pip.conf,src={pipdir / 'pip.conf'}"]
    for d in dict.fromkeys(dirs):
        args += ["--volume", f"{d}:{d}:ro"]
    return BuildInputs(args, conf, pins)


@dataclass
class Image:
    tag: str
    build_s: float
    size_bytes: int
    pins: list[str]
    log: str


def build_image(podman: Podman, repo: Path, base: str, inputs: BuildInputs) -> Image:
    """`podman build` of the project's Dockerfile on `base` (layers cached between runs)."""
    t0 = time.perf_counter()
    res = podman("build", "--network", "host", "--build-arg", f"BASE_IMAGE={base}",
                 *inputs.args, "-t", IMAGE_TAG, "-f", str(repo / "Dockerfile"), str(repo),
                 timeout=3000)  # fmt: skip
    build_s = time.perf_counter() - t0
    podman("image", "prune", "--force")  # the layers of earlier builds, now untagged
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE_TAG).stdout.strip())
    return Image(IMAGE_TAG, build_s, size, inputs.pins, res.stdout[-6000:])


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of everything under folder (folders too)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def run_args(image: str, user: tuple[int, int], mounts: list[tuple[Path, str, str]],
             *args: str, entrypoint: str | None = None) -> list[str]:  # fmt: skip
    """`podman run` arguments as the README's docker run: no network, `user` as uid:gid (root
    podman: the numbers are the host's), host folders mounted (mode "ro" or "rw")."""
    out = ["run", "--rm", "--network", "none", "--user", f"{user[0]}:{user[1]}",
           "--shm-size", "1g"]  # fmt: skip
    for host, target, mode in mounts:
        out += ["-v", f"{host}:{target}:{mode}"]
    if entrypoint:
        out += ["--entrypoint", entrypoint]
    return [*out, image, *args]


@functools.cache
def built_or_skip(repo: Path) -> tuple[Podman, Image]:
    """:func:`built_image`, or the test skipped with its reason."""
    import pytest

    got = built_image(repo)
    if isinstance(got, str):
        pytest.skip(got)
    return got


def built_image(repo: Path) -> tuple[Podman, Image] | str:
    """(podman, the image built from repo's Dockerfile) or why that cannot be done here: the
    test modules that share it skip with that reason."""
    reason = unavailable_reason()
    if reason:
        return reason
    podman = Podman()
    probe = podman("info", check=False, timeout=120)
    if probe.returncode != 0:
        return f"podman cannot start here: {probe.stderr.strip().splitlines()[-1:]}"
    rootfs = ensure_rootfs(podman.work)
    base = ensure_base(podman, rootfs)
    return podman, build_image(podman, repo, base, pip_build_inputs(podman.work))
