"""A Ray cluster of separate nodes on this machine, made as a user makes one (``ray start
--head``, ``ray start --address``), for the cluster tests of ``lipschitz-rnn sweep``.

* every node has the loopback address ``127.0.0.2`` (Ray replaces ``127.0.0.1`` by the
  machine's network address), ports of its own (picked free) and a temporary directory of its
  own, so it cannot meet another Ray on the machine;
* a worker node can run in a mount namespace of its own (``unshare --mount``, root only) with an
  empty tmpfs over given paths: the node sees none of the files there, as on a cluster without
  a shared filesystem;
* every process of a node carries an environment marker; :meth:`LocalCluster.kill_node` and
  :meth:`LocalCluster.stop` end exactly the processes that carry this cluster's marker, by
  their ids (``ray stop`` would end every Ray on the machine).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
#: the nodes' address: a loopback address that Ray keeps (it replaces 127.0.0.1 and localhost
#: by the machine's network address)
HOST = "127.0.0.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def why_no_cluster() -> str | None:
    """Why this machine cannot hold the test cluster (None when it can)."""
    if sys.platform != "linux":
        return "the cluster tests need Linux (mount namespaces)"
    if not Path(RAY).is_file():
        return f"no ray command beside {sys.executable} (pip install 'lipschitz-rnn[sweep]')"
    if shutil.which("unshare") is None:
        return "the cluster tests need unshare (util-linux)"
    if os.geteuid() != 0:
        return "the cluster tests need root for unshare --mount (a worker node without the " \
               "driver's files)"
    probe = subprocess.run(["unshare", "--mount", "sh", "-c",
                            "mount -t tmpfs lrnn-probe /mnt && umount /mnt"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare --mount with a tmpfs is not permitted here: {probe.stderr.strip()}"
    return None


def _pids_with(marker: str) -> list[int]:
    """Processes whose environment holds ``LRNN_TEST_RAY_NODE=<marker...>``."""
    needle = f"LRNN_TEST_RAY_NODE={marker}".encode()
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            env = (d / "environ").read_bytes()
        except OSError:
            continue
        if any(item.startswith(needle) for item in env.split(b"\0")):
            pids.append(int(d.name))
    return pids


class LocalCluster:
    """A head node without CPUs and worker nodes added with :meth:`add_worker`."""

    def __init__(self, *, token: bool = True, env: dict[str, str] | None = None):
        self.id = secrets.token_hex(4)
        # short: Ray's unix sockets live under it (a path of at most 107 bytes)
        self.root = Path(tempfile.mkdtemp(prefix=f"lr{self.id}"))
        self.port = free_port()
        self.address = f"{HOST}:{self.port}"
        self.token_path = self.root / "auth_token"
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("RAY_", "LRNN_TEST_RAY"))}
        self.env.update(env or {}, OMP_NUM_THREADS="1")
        self.env["HOME"] = str(self.root / "home")  # never the user's ~/.ray/auth_token
        (self.root / "home").mkdir()
        # what the nodes' processes leave in their temporary folders goes with the cluster
        self.env["TMPDIR"] = str(self.root / "tmp")
        (self.root / "tmp").mkdir()
        if token:
            self.token_path.write_text(secrets.token_hex(32))
            self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path))
        else:
            self.env["RAY_AUTH_MODE"] = "disabled"
        self.nodes: list[str] = []

    def client_env(self, base: dict[str, str], *, token: bool = True) -> dict[str, str]:
        """``base`` without Ray's settings, as a driver's environment: with the cluster's token
        (``token=False``: with none, and a home without ``~/.ray/auth_token``)."""
        env = {k: v for k, v in base.items() if not k.startswith(("RAY_", "LRNN_TEST_RAY"))}
        env["HOME"] = self.env["HOME"]
        env.pop("TMPDIR", None)
        if token:
            env.update({k: v for k, v in self.env.items() if k.startswith("RAY_AUTH")})
        return env

    def _start(self, name: str, args: list[str], hide: list[Path] = (),
               extra: dict[str, str] | None = None) -> None:
        env = {**self.env, **(extra or {}), "LRNN_TEST_RAY_NODE": f"{self.id}:{name}:"}
        temp = self.root / name
        cmd = [RAY, "start", f"--node-ip-address={HOST}", f"--temp-dir={temp}",
               "--disable-usage-stats", "--object-store-memory=80000000",
               f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
               f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}",
               f"--metrics-export-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}", *args]
        if hide:
            mounts = " && ".join(f'mount -t tmpfs lrnn-empty "{p}"' for p in hide)
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   f'{mounts} && exec "$@"', "sh", *cmd]
        self.nodes.append(name)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start of node {name} failed:\n{proc.stdout}\n{proc.stderr}")

    def start_head(self) -> None:
        # a node that stops answering is declared dead within seconds (default: ~15 s)
        fast = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "3"}
        self._start("head", ["--head", f"--port={self.port}", "--num-cpus=0",
                             "--include-dashboard=false",
                             f"--ray-client-server-port={free_port()}"], extra=fast)

    def add_worker(self, name: str, *, num_cpus: int = 1, hide: list[Path] = ()) -> None:
        """A worker node with ``num_cpus``; ``hide``: paths it sees as empty directories."""
        self._start(name, [f"--address={self.address}", f"--num-cpus={num_cpus}"], hide)

    def pids(self, name: str | None = None) -> list[int]:
        return _pids_with(f"{self.id}:{name}:" if name else f"{self.id}:")

    def node_id(self, name: str) -> str:
        """The Ray node id of node ``name``."""
        cmd = Path(f"/proc/{self.raylet_pid(name)}/cmdline").read_bytes().split(b"\0")
        return next(a.split(b"=", 1)[1].decode() for a in cmd if a.startswith(b"--node_id="))

    def raylet_pid(self, name: str) -> int:
        for pid in self.pids(name):
            try:
                exe = Path(f"/proc/{pid}/exe").resolve().name
            except OSError:
                continue
            if exe == "raylet":
                return pid
        raise LookupError(f"no raylet of node {name}")

    def _signal_node(self, name: str, sig: int) -> None:
        for pid in self.pids(name):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def freeze_node(self, name: str) -> None:
        """SIGSTOP every process of node ``name``: the node does nothing more (its trials make
        no progress, send nothing) until :meth:`thaw_node` or :meth:`kill_node`."""
        self._signal_node(name, signal.SIGSTOP)

    def thaw_node(self, name: str) -> None:
        """SIGCONT every process of node ``name`` (after :meth:`freeze_node`)."""
        self._signal_node(name, signal.SIGCONT)

    def kill_node(self, name: str) -> None:
        """SIGKILL every process of node ``name`` (a frozen one too): the node is lost. Killing
        only its raylet is not enough: a worker outlives its raylet for a second or more
        (until it notices), and goes on sending its trial's results to the driver."""
        self._signal_node(name, signal.SIGKILL)

    def stop(self) -> None:
        """End every process of the cluster (by id) and remove its directory."""
        for _ in range(50):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)
