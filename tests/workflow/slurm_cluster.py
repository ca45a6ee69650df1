"""A real one-node SLURM cluster on localhost, for tests of the Snakemake workflow's SLURM path.

Debian's ``slurm-wlm`` and ``munge`` packages (installed with apt when missing and the caller
is root); ``munged``, ``slurmctld`` and ``slurmd`` run in the foreground as child processes of
this one and are stopped by their pids. Key, configuration, state, sockets and logs all live in
one temporary folder; nothing under /etc is written and the default ports are not used, so a
real cluster on the same machine is left alone.

    reason = prepare()                      # None, or why no cluster can run here
    with SlurmCluster.start() as cluster:   # cluster.env: the environment for sbatch & co.
        subprocess.run(["sbatch", "--wrap", "hostname"], env=cluster.env)

    python -m tests.workflow.slurm_cluster  # a cluster for manual tries, until Ctrl-C

The node has the machine's CPUs and 90 % of its memory (select/cons_tres with CR_Core_Memory,
so requests beyond that are refused, and jobs queue for what is busy), two GRES "gpu"
devices without hardware behind them (``--gres=gpu:N`` is scheduled as on a GPU partition;
the jobs themselves see no GPU), and partitions ``cpu`` (default) and ``gpu``, as in
workflows/profiles/slurm. No job accounting (no slurmdbd): ``sacct`` and ``sacctmgr`` fail,
so the Snakemake executor plugin asks ``squeue`` for job states
(``--slurm-status-command squeue``, which it accepts when MinJobAge is at least three times
its first status-check interval; MinJobAge is 600 s here, which also keeps finished jobs in
``squeue --states=all`` for the tests to inspect).

The plugin's in-job executor (snakemake-executor-plugin-slurm-jobstep) starts each job's
command with ``srun`` in an environment stripped of every SLURM_* variable but the
allocation's ids, SLURM_CONF included; a real cluster's nodes have /etc/slurm/slurm.conf (or
run configless), this one has a ``bin/srun`` wrapper first on PATH that sets SLURM_CONF.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.apt import ensure_packages

PACKAGES = ("slurm-wlm", "munge")
# what the cluster and the executor plugin call (slurm-client holds the client commands)
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "srun", "scancel", "scontrol",
            "sinfo")  # fmt: skip
INSTALL_ENV = "WSIPIPE_SLURM_INSTALL"  # "0": never run apt-get, skip instead
N_GPUS = 2  # GRES "gpu" devices of the node (no hardware behind them)
MIN_JOB_AGE = 600  # seconds a finished job stays known to slurmctld (and to squeue)


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def prepare(timeout: float = 600) -> str | None:
    """Make the SLURM and MUNGE programs available; None when they are, else the reason why not.

    Installs ``slurm-wlm`` and ``munge`` with apt-get when a program is missing, the process is
    root, apt-get exists and ``WSIPIPE_SLURM_INSTALL`` is not ``0``. Idempotent: with the
    programs present it only looks them up.
    """
    return ensure_packages(PACKAGES, missing_binaries, INSTALL_ENV, timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_line(name: str, hostname: str) -> str:
    """slurm.conf's NodeName line: this machine's topology (``slurmd -C``), 90 % of its memory."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(\w+)=(\S+)", out.splitlines()[0]))
    topo = " ".join(f"{k}={fields[k]}" for k in
                    ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
                    if k in fields)  # fmt: skip
    memory = int(int(fields["RealMemory"]) * 0.9)
    return (f"NodeName={name} NodeHostname={hostname} NodeAddr=127.0.0.1 {topo} "
            f"RealMemory={memory} Gres=gpu:{N_GPUS} State=UNKNOWN")  # fmt: skip


def slurm_conf(root: Path, hostname: str, ports: tuple[int, int]) -> str:
    return "\n".join([
        "ClusterName=wsipipe-test",
        f"SlurmctldHost={hostname}(127.0.0.1)",
        f"SlurmctldPort={ports[0]}",
        f"SlurmdPort={ports[1]}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={root}/run/munge.socket",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/run/slurmctld.pid",
        f"SlurmdPidFile={root}/run/slurmd.pid",
        f"SlurmctldLogFile={root}/log/slurmctld.log",
        f"SlurmdLogFile={root}/log/slurmd.log",
        "ProctrackType=proctrack/linuxproc",  # no cgroups needed
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "SchedulerType=sched/backfill",
        "MpiDefault=none",
        "MailProg=/bin/true",
        f"MinJobAge={MIN_JOB_AGE}",
        "ReturnToService=2",
        "KillWait=5",
        "GresTypes=gpu",
        node_line(hostname, hostname),
        f"PartitionName=cpu Nodes={hostname} Default=YES MaxTime=INFINITE State=UP",
        f"PartitionName=gpu Nodes={hostname} MaxTime=INFINITE State=UP",
        "",
    ])  # fmt: skip


@dataclass
class SlurmCluster:
    root: Path
    conf: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    # ---- start / stop ---------------------------------------------------------------------
    @classmethod
    def start(cls, timeout: float = 60) -> SlurmCluster:
        """Bring the cluster up in a new temporary folder; raises RuntimeError (with the
        daemons' log tails) when it is not accepting jobs within ``timeout`` seconds."""
        if missing_binaries():
            raise RuntimeError(f"SLURM/MUNGE programs missing: {', '.join(missing_binaries())}")
        # munged wants every folder above its socket searchable by all: not pytest's tmp_path
        root = Path(tempfile.mkdtemp(prefix="wsipipe-slurm-"))
        root.chmod(0o755)
        for sub, mode in (("run", 0o755), ("munge", 0o700), ("state", 0o700),
                          ("spool", 0o755), ("log", 0o755), ("bin", 0o755)):  # fmt: skip
            (root / sub).mkdir(mode=mode)
            (root / sub).chmod(mode)
        hostname = socket.gethostname().split(".")[0]
        conf = root / "slurm.conf"
        conf.write_text(slurm_conf(root, hostname, (free_port(), free_port())))
        (root / "gres.conf").write_text(  # two character devices stand in for GPUs
            f"NodeName={hostname} Name=gpu File=/dev/null\n"
            f"NodeName={hostname} Name=gpu File=/dev/zero\n"
        )
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        srun = root / "bin" / "srun"
        srun.write_text(f'#!/bin/sh\nSLURM_CONF={conf} exec {shutil.which("srun")} "$@"\n')
        srun.chmod(0o755)

        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
        env.update(SLURM_CONF=str(conf), PATH=f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}")
        cluster = cls(root=root, conf=conf, env=env)
        try:
            cluster._spawn("munged", ["munged", "-F", f"--key-file={key}",
                           f"--socket={root}/run/munge.socket",
                           f"--pid-file={root}/run/munged.pid",
                           f"--log-file={root}/log/munged.log",
                           f"--seed-file={root}/munge/munged.seed"])  # fmt: skip
            cluster._wait(lambda: (root / "run" / "munge.socket").exists(), timeout, "munged")
            cluster._spawn("slurmctld", ["slurmctld", "-D", "-f", str(conf)])
            cluster._wait(lambda: "UP" in cluster.run("scontrol", "ping").stdout, timeout,
                          "slurmctld")  # fmt: skip
            cluster._spawn("slurmd", ["slurmd", "-D", "-f", str(conf), "-N", hostname])
            cluster._wait(lambda: cluster.node_state() == "idle", timeout, "slurmd")
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _spawn(self, name: str, cmd: list[str]) -> None:
        out = (self.root / "log" / f"{name}.out").open("wb")
        self.procs[name] = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        out.close()

    def _wait(self, ready: Callable[[], bool], timeout: float, name: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log_tail()}")
            if ready():
                return
            time.sleep(0.2)
        raise RuntimeError(f"{name} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30) -> None:
        """Cancel this cluster's jobs, stop slurmd, slurmctld and munged by pid (SIGTERM, then
        SIGKILL), remove the folder. Safe to call twice."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            self.run("scancel", "--user", str(os.geteuid()))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and any(
                s in ("RUNNING", "PENDING", "COMPLETING", "CONFIGURING")
                for s in self.jobs_states().values()
            ):
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- queries --------------------------------------------------------------------------
    def run(self, *cmd: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """A SLURM client command against this cluster."""
        try:
            return subprocess.run(cmd, env=self.env, capture_output=True, text=True,
                                  timeout=timeout)  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            return subprocess.CompletedProcess(cmd, 124, "", str(exc))

    def node_state(self) -> str:
        res = self.run("sinfo", "--noheader", "--partition=cpu", "--format=%T")
        return res.stdout.strip() if res.returncode == 0 else ""

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld knows (finished ones for MinJobAge), oldest first: id, name,
        comment, state, partition, cpus, memory, time limit, gres."""
        keys = ("id", "name", "comment", "state", "partition", "cpus", "memory", "time", "gres")
        res = self.run("squeue", "--states=all", "--noheader",
                       "--format=%i|%j|%k|%T|%P|%C|%m|%l|%b")  # fmt: skip
        rows = [dict(zip(keys, line.split("|"), strict=True))
                for line in res.stdout.splitlines() if line.strip()]  # fmt: skip
        return sorted(rows, key=lambda r: int(r["id"].split("_")[0]))

    def jobs_states(self) -> dict[str, str]:
        return {j["id"]: j["state"] for j in self.jobs()}

    def log_tail(self, lines: int = 15) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)


def main() -> int:
    reason = prepare()
    if reason:
        print(f"no SLURM cluster: {reason}", file=sys.stderr)
        return 1
    with SlurmCluster.start() as cluster:
        print(f"export SLURM_CONF={cluster.conf} PATH={cluster.env['PATH']}")
        print("cluster up; Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.signal(signal.SIGTERM, signal.default_int_handler)
            while True:
                time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
