"""A real single-node Slurm cluster on loopback for tests: munged, slurmctld and slurmd in the
foreground, each with its own config, key, socket, state and spool under one temporary directory.

No systemd or cgroups: ProctrackType=proctrack/linuxproc and TaskPlugin=task/none. SlurmUser=root
(CI runs as root). Clients find the cluster through SLURM_CONF (`SlurmCluster.env`); the munge
socket is named in slurm.conf (AuthInfo=socket=...), so the system's munged is never used.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from distcomp_obs.netutil import free_port

#: the binaries the cluster and the tests need (Debian: apt-get install slurm-wlm munge)
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "squeue", "sinfo")
#: PATH with the system directories the daemons live in (Debian puts munged, slurmctld and slurmd in
#: /usr/sbin, which a non-login shell's PATH may lack)
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
#: seconds between a job's SIGTERM and its SIGKILL when it is cancelled or runs out of time
KILL_WAIT_S = 5
#: job states of a job that has not ended (squeue -t)
ACTIVE = "pending,configuring,running,completing,suspended"

SLURM_CONF = """\
ClusterName=distcomptest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={dir}/munge/munge.socket
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait={kill_wait}
MinJobAge=600
InactiveLimit=0
Waittime=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    def __init__(self) -> None:
        # Under /tmp, not pytest's tmp_path: munged wants every directory of its socket's path
        # searchable by all, and a Unix socket path must stay short.
        self.dir = Path(tempfile.mkdtemp(prefix="distcomp-slurm-"))
        self.dir.chmod(0o755)
        self.conf = self.dir / "slurm.conf"
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "PATH": SEARCH_PATH, "SLURM_CONF": str(self.conf)}

    def start(self, timeout_s: float = 60) -> SlurmCluster:
        for sub in ("munge", "state", "spool", "log"):
            (self.dir / sub).mkdir(mode=0o755)
        key = self.dir / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        m = self.dir / "munge"
        self._spawn("munged", ["munged", "-F", f"--key-file={key}", f"--socket={m}/munge.socket",
                               f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log",
                               f"--seed-file={m}/munged.seed"])  # fmt: skip
        self._wait(lambda: (m / "munge.socket").exists(), timeout_s, "munged's socket")
        self.conf.write_text(SLURM_CONF.format(dir=self.dir, ctld_port=free_port(), slurmd_port=free_port(),
                                               kill_wait=KILL_WAIT_S, cpus=os.cpu_count() or 1))  # fmt: skip
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-N", "localhost", "-f", str(self.conf)])
        self._wait(lambda: self.client("sinfo", "-h", "-N", "-o", "%T", check=False).strip() == "idle",
                   timeout_s, "the node to come up idle")  # fmt: skip
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.dir / "log" / f"{name}.out", "wb")
        self.procs.append(subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env))
        out.close()  # the child has its own copy

    def _wait(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited ({proc.returncode}) waiting for {what}:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}:\n{self.logs()}")
            time.sleep(0.2)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(
            (self.dir / "log").glob("*")) if p.is_file())  # fmt: skip

    def client(self, *argv: str, check: bool = True, env: dict[str, str] | None = None) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env={**self.env, **(env or {})})
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr}")
        return done.stdout

    def sbatch(self, *args: str, env: dict[str, str] | None = None) -> str:
        """Submit a batch job; returns its job id (an array's: the array job id)."""
        return self.client("sbatch", "--parsable", *args, env=env).strip().split(";")[0]

    def jobs(self, job: str) -> list[dict[str, str]]:
        """`scontrol show job` of a job, or of each task of an array job: one dict of fields each."""
        out = self.client("scontrol", "-o", "show", "job", job, check=False)
        return [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in out.splitlines() if line]

    def wait_ended(self, job: str, timeout_s: float) -> list[dict[str, str]]:
        """Wait until every task of `job` has ended; returns their records."""
        deadline = time.monotonic() + timeout_s
        while True:
            records = self.jobs(job)
            if records and all(r["JobState"].lower() not in ACTIVE.split(",") for r in records):
                return records
            if time.monotonic() > deadline:
                states = [r.get("JobState") for r in records]
                raise TimeoutError(f"job {job} still {states} after {timeout_s}s:\n{self.logs()}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Cancel every job, wait for them to go, stop the daemons, remove the directory."""
        try:
            self.client("scancel", "--full", "--user=root", check=False)
            deadline = time.monotonic() + 3 * KILL_WAIT_S + 10
            while self.client("squeue", "-h", "-t", ACTIVE, "-o", "%i", check=False).strip():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        except (OSError, subprocess.SubprocessError):
            pass
        for proc in reversed(self.procs):  # slurmd, slurmctld, then munged
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
