#!/usr/bin/env python3
"""Test stand-in for the `apptainer` command, carried out by podman: Snakemake's container
support calls apptainer only (`--software-deployment-method apptainer`), and apptainer is
neither a Debian bookworm package nor on PyPI, so the workflow's `container:` path is run
here through the three calls Snakemake makes:

  apptainer --version
  apptainer pull --name HASH.simg docker://IMAGE       (cwd .snakemake/singularity)
  apptainer [--quiet --silent] exec --home DIR [--bind SRC[:DST[:ro]]] [--pwd DIR] IMG sh -c CMD

`pull` writes the image name into HASH.simg; `exec` becomes `podman run` of that image with
apptainer's default binds (the working directory, the home folder) plus the given ones, the
working directory kept, as WSIPIPE_PODMAN_USER (uid:gid), no network. WSIPIPE_PODMAN_ARGV
is the podman command with its global options (JSON list). Every exec is appended to
WSIPIPE_PODMAN_LOG. Not apptainer: no SIF images, no --nv, no environment passing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

VERSION = "apptainer version 1.3.0"  # Snakemake parses the last word


def fail(msg: str) -> int:
    print(f"apptainer stand-in: {msg}", file=sys.stderr)
    return 2


def binds(spec: str) -> list[str]:
    """apptainer -B src[:dst[:opts]],... -> podman -v values."""
    out = []
    for item in filter(None, spec.split(",")):
        parts = item.split(":")
        src = parts[0]
        dst = parts[1] if len(parts) > 1 else src
        mode = parts[2] if len(parts) > 2 else "rw"
        out.append(f"{src}:{dst}:{mode}")
    return out


def main(argv: list[str]) -> int:
    args = [a for a in argv if a not in ("--quiet", "--silent", "-q", "-s")]
    if args == ["--version"]:
        print(VERSION)
        return 0
    if args[:1] == ["pull"] and "--name" in args:
        name = args[args.index("--name") + 1]
        Path(name).write_text(args[-1].removeprefix("docker://") + "\n")
        return 0
    if args[:1] != ["exec"]:
        return fail(f"unsupported call {argv}")
    cwd = os.getcwd()
    volumes = [f"{cwd}:{cwd}:rw"]
    workdir = cwd
    i = 1
    while i < len(args) and args[i].startswith("-"):
        opt, value = args[i], args[i + 1] if i + 1 < len(args) else ""
        if opt == "--home":
            volumes.append(f"{value}:{value}:rw")
        elif opt in ("--bind", "-B"):
            volumes += binds(value)
        elif opt == "--pwd":
            workdir = value
        else:
            return fail(f"unsupported option {opt}")
        i += 2
    img, cmd = args[i], args[i + 1 :]
    image = Path(img).read_text().strip() if Path(img).is_file() else img
    podman = json.loads(os.environ["WSIPIPE_PODMAN_ARGV"])
    run = [*podman, "run", "--rm", "--network", "none", "--user",
           os.environ["WSIPIPE_PODMAN_USER"], "--shm-size", "1g", "-w", workdir]  # fmt: skip
    for v in dict.fromkeys(volumes):
        run += ["-v", v]
    run += ["--entrypoint", cmd[0], image, *cmd[1:]]
    with open(os.environ["WSIPIPE_PODMAN_LOG"], "a") as log:
        log.write(json.dumps(run) + "\n")
    return subprocess.run(run).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
