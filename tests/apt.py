"""Debian packages a test needs: installed with apt-get where the test process may do so
(root, apt-get present, the named environment variable not "0"), else the reason to skip.

CI runs the suite as root on a clean Debian machine, so the tests that need a system
library or daemon (DICOM conversion's libturbojpeg, the one-node SLURM cluster) run there
instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Sequence


def ensure_packages(
    packages: Sequence[str],
    missing: Callable[[], list[str]],
    env_var: str = "WSIPIPE_APT_INSTALL",
    timeout: float = 600,
) -> str | None:
    """None when ``missing()`` is empty (after installing ``packages`` if needed), else why
    the test must skip. ``missing`` names what is absent (programs, libraries)."""
    absent = missing()
    if not absent:
        return None
    what = f"{', '.join(absent)} missing"
    names = " ".join(packages)
    if os.environ.get(env_var, "1") == "0":
        return f"{what}; {env_var}=0 forbids installing {names}"
    if os.geteuid() != 0:
        return f"{what}; installing {names} with apt-get needs root"
    if shutil.which("apt-get") is None:
        return f"{what}; no apt-get to install {names} with"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "-o", "DPkg::Lock::Timeout=120", "install", "-y", *packages]
    last = ""
    for cmd in (install, ["apt-get", "update"], install):  # update only when needed
        try:
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"{what}; `{' '.join(cmd)}` took more than {timeout:.0f} s"
        last = (res.stderr.strip().splitlines() or [""])[-1]
        if res.returncode == 0 and cmd is install and not missing():
            return None
    return f"{what}; `{' '.join(install)}` failed: {last}"
