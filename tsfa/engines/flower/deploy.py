"""tsfa on Flower's deployment engine, on this machine: real processes, encrypted, closed.

:class:`Deployment` starts, watches and stops a whole deployment (docs/flower.md "Real devices"):

1. credentials made fresh in its work folder (:mod:`tsfa.engines.flower.credentials`): a local
   CA and the SuperLink's TLS certificate, one authentication key pair per SuperNode;
2. ``flower-superlink`` with TLS and ``--enable-supernode-auth`` (one HTTPS port on
   ``127.0.0.1`` serves the Fleet, Control and Runtime APIs in flwr 1.42), its state in a
   database file, runtime dependency installation off;
3. every SuperNode's public key registered with the ``flwr`` CLI (``flwr supernode register``);
4. K ``flower-supernode`` processes, ``partition-id`` 0..K-1, each with the CA, its private key
   and a ``state-dir`` for its clients' error-feedback memories (so a resumed run continues them);
5. ``flwr run`` of a generated app project whose components are the installed tsfa apps, with
   the run config as a TOML file; the run's status is read back with ``flwr ls`` (``flwr run
   --stream`` exits 0 even when the run failed).

Every process is started in its own process group, with the work folder in its environment
(``TSFA_DEPLOYMENT``, which every process Flower starts from it inherits); stopping ends each
group (SIGTERM, then SIGKILL) and then, by PID, any process still carrying the marker; a new
Deployment in the same folder first ends what a killed one left. Loopback addresses only; the
``flwr`` CLI's home (``FLWR_HOME``) is inside the work folder, so nothing is written to
``~/.flwr``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from tsfa.config.experiment import RunConfig
from tsfa.engines.flower.credentials import make_node_key, make_tls
from tsfa.engines.output import RunResult, read_result

CONNECTION = "tsfa-local"  # the SuperLink connection in FLWR_HOME/config.toml
APP = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "tsfa-deployment"
version = "1.0.0"
description = "the installed tsfa ServerApp and ClientApp on Flower's deployment engine"
license = "MIT"
dependencies = []

[tool.flwr.app]
publisher = "tsfa"

[tool.flwr.app.components]
serverapp = "tsfa.engines.flower.server_app:app"
clientapp = "tsfa.engines.flower.client_app:app"

[tool.flwr.app.config]
config = ""
out = ""
resume = false
deployment = true
join-timeout-s = 600.0
round-timeout-s = 3600.0
"""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


MARKER = "TSFA_DEPLOYMENT"  # environment variable every process of a deployment inherits


def processes(pattern: str = "", pgid: int | None = None, marker: str | None = None) -> list[int]:
    """Live PIDs (zombies excluded) whose command line contains ``pattern``, in process group
    ``pgid`` if given, and whose environment has ``TSFA_DEPLOYMENT=marker`` if given (Linux
    /proc). Flower starts some processes in sessions of their own (the SuperLink's SuperExec and
    its ``flwr-serverapp``), so a deployment finds its processes by the marker it put in their
    environment, which every descendant inherits."""
    found, tag = [], None if marker is None else f"{MARKER}={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if pgid is not None and os.getpgid(pid) != pgid:
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            if tag is not None and tag not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (ProcessLookupError, FileNotFoundError, PermissionError, IndexError):
            continue
        if pattern in cmd:
            found.append(pid)
    return sorted(found)


def _kill(pids: list[int]) -> None:
    """SIGKILL each PID (one already gone is skipped)."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _json(text: str) -> dict:
    return json.loads(text[text.index("{"):])


class Deployment:
    """A SuperLink and K SuperNodes of ``cfg`` (K = ``clients.num_clients``) on this machine, in
    ``workdir``: ``with Deployment(cfg, workdir) as d: result = d.run(out)``.

    ``join_timeout_s``: how long a run waits for all K nodes before it starts with those
    present; ``round_timeout_s``: how long a round waits for replies (a client without one is
    lost); ``env``: extra environment for every process (``OMP_NUM_THREADS=1`` is set unless
    given). Processes log to ``workdir/logs``.
    """

    def __init__(self, cfg: RunConfig, workdir: str | Path, join_timeout_s: float = 120.0,
                 round_timeout_s: float = 600.0, env: dict | None = None):
        self.cfg, self.dir = cfg, Path(workdir).resolve()
        self.K = cfg.system.clients.num_clients
        self.join_timeout_s, self.round_timeout_s = float(join_timeout_s), float(round_timeout_s)
        self.creds, self.logs = self.dir / "credentials", self.dir / "logs"
        self.home, self.app = self.dir / "flwr-home", self.dir / "app"
        self.procs: dict[str, subprocess.Popen] = {}
        self.port = 0
        self.node_ports: dict[str, int] = {}
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                    **(env or {}), "FLWR_HOME": str(self.home), "COLUMNS": "200",
                    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", MARKER: str(self.dir)}

    # ------------------------------------------------------------------ processes
    def end_leftovers(self) -> list[int]:
        """End what a previous Deployment in this folder left (a killed ``tsfa train``): every
        process with this folder's marker, by PID."""
        ended = self.running()
        _kill(ended)
        return ended

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        """Start ``cmd`` as process ``name`` in its own group, logging to ``logs/name.log``."""
        if name in self.procs and self.procs[name].poll() is None:
            raise RuntimeError(f"{name} is already running (pid {self.procs[name].pid})")
        with open(self.logs / f"{name}.log", "ab") as log:
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                 start_new_session=True)
        self.procs[name] = p
        return p

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process group of ``name`` (SIGKILL: a device that drops out)."""
        try:
            os.killpg(self.procs[name].pid, sig)
        except ProcessLookupError:
            pass

    def kill_serverapp(self) -> int:
        """SIGKILL the ServerApp process (``flwr-serverapp``, in the SuperLink's group): the
        server side of a run dies mid-run; its PID."""
        pids = processes("flwr-serverapp", marker=str(self.dir))
        if not pids:
            raise RuntimeError("no flwr-serverapp process is running")
        _kill(pids)
        return pids[0]

    def stop(self, name: str, grace_s: float = 10.0) -> None:
        """End ``name``'s process group: SIGTERM, SIGKILL after ``grace_s``; reap it."""
        p = self.procs.pop(name, None)
        if p is None:
            return
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                break
            try:
                p.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # what the group left (an orphaned flwr-clientapp of a killed SuperNode)
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop_all(self, grace_s: float = 10.0) -> None:
        """Stop every process this deployment started (SuperLink last), then SIGKILL, by PID,
        any process still carrying its marker (those Flower started in sessions of their own)."""
        for name in sorted(self.procs, key=lambda n: n == "superlink"):
            self.stop(name)
        t0 = time.monotonic()
        while self.running() and time.monotonic() - t0 < grace_s:
            time.sleep(0.5)  # Flower's own processes end with their parents
        _kill(self.running())

    def running(self) -> list[int]:
        """PIDs of every live process of this deployment (its marker in their environment)."""
        return [pid for pid in processes(marker=str(self.dir)) if pid != os.getpid()]

    # ------------------------------------------------------------------ set-up
    def __enter__(self) -> Deployment:
        for d in (self.creds, self.logs, self.home, self.app):
            d.mkdir(parents=True, exist_ok=True)
        self.end_leftovers()
        self.port = free_port()
        fresh = not (self.creds / "ca.crt").is_file()
        if fresh:  # one CA per work folder: a resumed deployment keeps its keys and registrations
            make_tls(self.creds)
        for k in range(self.K):
            if not (self.creds / f"node{k}").is_file():
                make_node_key(self.creds, f"node{k}")
        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\nroot-certificates = "{self.creds / "ca.crt"}"\n')
        (self.app / "pyproject.toml").write_text(APP)
        self.start("superlink", [
            "flower-superlink", "--ssl-ca-certfile", str(self.creds / "ca.crt"),
            "--ssl-certfile", str(self.creds / "server.pem"),
            "--ssl-keyfile", str(self.creds / "server.key"), "--enable-supernode-auth",
            "--disable-runtime-dependency-installation", "--database", str(self.dir / "state.db"),
            "--host", "127.0.0.1", "--port", str(self.port)])
        self.wait_port(self.port, "superlink")
        for k in range(self.K):
            self.register(self.creds / f"node{k}.pub")
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()

    def wait_port(self, port: int, name: str, timeout_s: float = 60.0) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited (code {self.procs[name].returncode}); see "
                                   f"{self.logs / (name + '.log')}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.3)
        raise TimeoutError(f"{name}: nothing listens on 127.0.0.1:{port} after {timeout_s:.0f} s")

    def flwr(self, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
        """The ``flwr`` CLI against this deployment's SuperLink."""
        return subprocess.run(["flwr", *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout_s)

    def register(self, public_key: Path) -> int | None:
        """Register a SuperNode public key; its node id (None if this database already has it)."""
        cp = self.flwr("supernode", "register", str(public_key), CONNECTION, "--format", "json")
        if cp.returncode != 0:
            if "already in use" in cp.stdout + cp.stderr:
                return None
            raise RuntimeError(f"flwr supernode register {public_key.name}: "
                               f"{(cp.stdout + cp.stderr).strip()[-400:]}")
        return int(_json(cp.stdout)["node-id"])

    def supernode(self, k: int, name: str | None = None, key: Path | None = None,
                  tls: str = "ca", auth: bool = True, state: bool = True) -> subprocess.Popen:
        """Start the SuperNode of client ``k`` (partition-id k) as ``name`` (default
        ``supernode{k}``), authenticated with ``key`` (default: node k's registered key; none
        when ``auth`` is False), trusting ``tls``: "ca" (the local CA), "system" (the system's
        CAs only) or "insecure" (plain text); with a ``state-dir`` for its memories."""
        if tls not in ("ca", "system", "insecure"):
            raise ValueError(f"tls = {tls!r}: must be one of ca, system, insecure")
        name = name or f"supernode{k}"
        port = self.node_ports.setdefault(name, free_port())
        node_config = f"partition-id={k} num-partitions={self.K}"
        if state:
            node_config += f' state-dir="{self.dir / "state" / f"node{k}"}"'
        cmd = ["flower-supernode", "--superlink", f"127.0.0.1:{self.port}",
               "--node-config", node_config, "--host", "127.0.0.1", "--port", str(port)]
        if auth:
            cmd += ["--auth-supernode-private-key",
                    str(self.creds / f"node{k}" if key is None else key)]
        cmd += {"ca": ["--root-certificates", str(self.creds / "ca.crt")], "system": [],
                "insecure": ["--insecure"]}[tls]
        return self.start(name, cmd)

    def rejoin(self, k: int, timeout_s: float = 180.0) -> float:
        """Restart client ``k``'s SuperNode (same key, partition and state dir) until the
        SuperLink lets it in: it refuses a node it still holds online, until the node's
        heartbeats have lapsed (about a minute after a crash), and the SuperNode then exits;
        a device would retry, so this does. Seconds until it is online again."""
        name, t0 = f"supernode{k}", time.monotonic()
        self.stop(name)
        log = self.logs / f"{name}.log"
        while time.monotonic() - t0 < timeout_s:
            seen = log.stat().st_size if log.is_file() else 0
            p = self.supernode(k)
            while p.poll() is None and time.monotonic() - t0 < timeout_s:
                with open(log, "rb") as f:
                    f.seek(seen)
                    if b"SuperNode ID" in f.read():  # activated: it is in
                        return time.monotonic() - t0
                time.sleep(1.0)
                time.sleep(1.0)
            self.stop(name)
            time.sleep(3.0)
        raise TimeoutError(f"{name} did not rejoin within {timeout_s:.0f} s; see "
                           f"{self.logs / (name + '.log')}")

    def clientapps(self, name: str) -> list[int]:
        """PIDs of the ClientApp processes SuperNode ``name`` runs now."""
        return processes("flwr-clientapp", pgid=self.procs[name].pid)

    def online(self) -> int:
        """SuperNodes the SuperLink lists as online."""
        cp = self.flwr("supernode", "ls", CONNECTION, "--format", "json")
        if cp.returncode != 0:
            return 0
        return sum(n.get("status") == "online" for n in _json(cp.stdout).get("nodes", []))

    def wait_online(self, n: int, timeout_s: float = 120.0) -> float:
        """Wait until ``n`` SuperNodes are online; seconds waited."""
        t0 = time.monotonic()
        while (have := self.online()) < n:
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"{have} of {n} SuperNodes online after {timeout_s:.0f} s; "
                                   f"see {self.logs}")
            time.sleep(1.0)
        return time.monotonic() - t0

    def start_supernodes(self) -> None:
        for k in range(self.K):
            self.supernode(k)
        self.wait_online(self.K)

    # ------------------------------------------------------------------ runs
    def launch(self, out: str | Path, resume: bool = False, log: str = "run",
               cfg: RunConfig | None = None) -> subprocess.Popen:
        """Start ``flwr run`` of this config (or ``cfg``, with as many clients) into ``out``
        (non-blocking; :meth:`finish`)."""
        cfg = self.cfg if cfg is None else cfg
        if cfg.system.clients.num_clients != self.K:
            raise ValueError(f"clients.num_clients = {cfg.system.clients.num_clients}: this "
                             f"deployment has {self.K} SuperNodes")
        config = self.dir / "run_config.toml"
        config.write_text(cfg.to_toml(), encoding="utf-8")
        run_config = (f'config="{config}" out="{Path(out).resolve()}" '
                      f"resume={'true' if resume else 'false'} deployment=true "
                      f"join-timeout-s={self.join_timeout_s!r} "
                      f"round-timeout-s={self.round_timeout_s!r}")
        return self.start(log, ["flwr", "run", str(self.app), CONNECTION, "--run-config",
                                run_config, "--stream"])

    def finish(self, log: str = "run", timeout_s: float = 3600.0) -> dict:
        """Wait for the run started as ``log``; its ``flwr ls`` record (``status`` etc.).
        Raises RuntimeError naming the log unless the run completed."""
        proc = self.procs[log]
        proc.wait(timeout=timeout_s)
        self.stop(log)
        text = (self.logs / f"{log}.log").read_text(errors="replace")
        ids = re.findall(r"Successfully started run (\d+)", text)
        if not ids:
            raise RuntimeError(f"flwr run did not start (code {proc.returncode}); see "
                               f"{self.logs / (log + '.log')}")
        cp = self.flwr("ls", CONNECTION, "--run-id", ids[-1], "--format", "json")
        info = _json(cp.stdout)["runs"][0]
        if info.get("status") != "finished:completed":
            raise RuntimeError(f"run {ids[-1]} ended {info.get('status')!r}; see "
                               f"{self.logs / (log + '.log')} and {self.logs / 'superlink.log'}")
        return info

    def run(self, out: str | Path, resume: bool = False, timeout_s: float = 3600.0) -> dict:
        """One whole run into ``out`` (blocking); its ``flwr ls`` record."""
        self.launch(out, resume)
        return self.finish("run", timeout_s)


def train_deployment(cfg: RunConfig, out: str | Path, resume: bool = False,
                     join_timeout_s: float = 120.0, round_timeout_s: float = 600.0) -> RunResult:
    """``cfg`` on a real deployment on this machine (``tsfa train --engine deployment``): a
    TLS SuperLink and K registered SuperNodes in ``out/deployment`` (credentials, logs, the
    clients' state dirs), one run into ``out`` (``resume``: from its checkpoint), everything
    stopped afterwards; the run's result read back from ``out``."""
    out = Path(out).resolve()
    with Deployment(cfg, out / "deployment", join_timeout_s, round_timeout_s) as d:
        d.start_supernodes()
        d.run(out, resume=resume)
    return read_result(out)


__all__ = ["CONNECTION", "Deployment", "free_port", "processes", "train_deployment"]
