"""A real one-node SLURM cluster on 127.0.0.1 for tests: Debian's ``slurm-wlm`` and ``munge`` (the Makefile
installs them), no systemd.

``slurm_cluster(folder, cpus)`` starts ``munged`` (as the ``munge`` user, unless one already answers),
``slurmctld`` and ``slurmd`` in the foreground with a ``slurm.conf`` written under ``folder`` (free ports,
``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``, one node ``localhost`` at 127.0.0.1), waits until
the node is idle, yields the environment that points ``sbatch``/``squeue``/``scancel`` at it (``SLURM_CONF``),
and stops everything (jobs cancelled) on exit. Needs root, as CI runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

CONF = """\
ClusterName=cloudmask-test
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def missing() -> str | None:
    """What is missing to run SLURM here (None when nothing is)."""
    tools = [
        t
        for t in ("slurmctld", "slurmd", "sbatch", "munged", "runuser")
        if not shutil.which(t) and not Path("/usr/sbin", t).exists()
    ]
    if tools:
        return f"{', '.join(tools)} not installed (make install-slurm: Debian's slurm-wlm and munge)"
    if os.geteuid() != 0:
        return "slurmd must run as root here (as CI runs)"
    return None


def _munge_answers() -> bool:
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        return (
            cred.returncode == 0
            and subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=10).returncode == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def _munged():
    if _munge_answers():
        yield
        return
    run_dir = Path("/run/munge")
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "munge", "munge")
    proc = subprocess.Popen(
        ["runuser", "-u", "munge", "--", "/usr/sbin/munged", "--foreground"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(100):
            if _munge_answers():
                break
            if proc.poll() is not None:
                raise RuntimeError(f"munged exited: {proc.stderr.read().decode()[-500:]}")
            time.sleep(0.1)
        else:
            raise RuntimeError("munged did not answer within 10 s")
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def squeue(env: dict) -> list[tuple[str, str, str]]:
    """``(job id, name, state)`` of the cluster's jobs."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True, env=env, timeout=30)
    return [tuple(line.split()) for line in out.stdout.splitlines() if line.strip()]


@contextlib.contextmanager
def slurm_cluster(folder: Path, cpus: int = 2, memory_mb: int = 16000):
    folder.mkdir(parents=True, exist_ok=True)
    for d in ("state", "spool"):
        (folder / d).mkdir(exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(
        CONF.format(root=folder, ctld_port=_free_port(), d_port=_free_port(), cpus=cpus, memory_mb=memory_mb)
    )
    env = dict(os.environ, SLURM_CONF=str(conf))
    with _munged():
        daemons = [
            subprocess.Popen(
                ["/usr/sbin/slurmctld", "-D", "-i", "-f", str(conf)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        ]
        try:
            daemons.append(
                subprocess.Popen(
                    ["/usr/sbin/slurmd", "-D", "-f", str(conf), "-N", "localhost"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
            deadline = time.monotonic() + 60
            state = ""
            while time.monotonic() < deadline:
                state = subprocess.run(
                    ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env, timeout=30
                ).stdout.strip()
                if state == "idle":
                    break
                for d in daemons:
                    if d.poll() is not None:
                        raise RuntimeError(
                            f"{d.args[0]} exited ({d.returncode}): "
                            f"{_tail(folder / 'slurmctld.log')} {_tail(folder / 'slurmd.log')}"
                        )
                time.sleep(0.2)
            else:
                raise RuntimeError(f"the SLURM node is {state!r}, not idle, after 60 s: {_tail(folder / 'slurmd.log')}")
            yield env
        finally:
            subprocess.run(["scancel", "--full", "-u", "root"], env=env, capture_output=True, timeout=30)
            for d in reversed(daemons):
                d.terminate()
            for d in reversed(daemons):
                try:
                    d.wait(30)
                except subprocess.TimeoutExpired:
                    d.kill()


def _tail(path: Path) -> str:
    return path.read_text()[-800:] if path.exists() else ""
