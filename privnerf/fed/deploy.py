"""Run a federated experiment on Flower's Deployment Engine: one SuperLink and one SuperNode per user, each a
separate process on loopback, driven by the ``flwr`` CLI (``privnerf fed run --engine deployment``).

What :func:`run_deployment` does, in the run directory ``R`` (see ``docs/federation-deployment.md``):

1. :func:`privnerf.fed.run.prepare_run` writes ``R/config.json``; a minimal Flower App is written to ``R/app``
   (``pyproject.toml`` naming :mod:`privnerf.fed.apps` and the config file as run config ``config-json``).
2. TLS (default): a CA and a server certificate for ``127.0.0.1``/``localhost`` in ``R/certs``; SuperNode
   authentication: one EC (P-384) key pair per SuperNode in ``R/certs/supernodes``, the public keys registered
   with ``flwr supernode register`` before any SuperNode starts. ``cfg.insecure`` turns both off (loopback tests).
3. ``flower-superlink`` and ``cfg.num_users`` ``flower-supernode`` processes (``--node-config "user-id=K"``) on
   free loopback ports, ``FLWR_HOME`` under ``R/flwr`` (the CLI's ``config.toml`` holds a ``deploy`` profile).
4. ``flwr run R/app deploy --stream`` until the run ends and ``R/results.json`` exists; then every process
   started here is stopped by PID (with the helpers Flower spawned under it), also on errors and Ctrl-C.
   Every process's output is kept in ``R/deploy-logs/<name>.log``.

Flower 1.41 serves the Fleet, Control and Runtime (ServerAppIo) APIs of the SuperLink over one HTTPS port
(``--host``/``--port``); each SuperNode serves its Runtime (ClientAppIo) API on a port of its own.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from privnerf.fed.config import FedConfig

PROFILE = "deploy"
"""Name of the SuperLink connection in ``$FLWR_HOME/config.toml``."""


class DeploymentError(RuntimeError):
    """A Deployment Engine process failed (the message names it and ends with the tail of its log)."""


# -- keys and certificates -------------------------------------------------------------------------------
def make_tls_certificates(cert_dir: Path, days: int = 30) -> dict[str, Path]:
    """A private CA and a server certificate signed by it for ``127.0.0.1``, ``::1`` and ``localhost``
    (EC P-256). Returns the paths ``ca`` (give it to SuperNodes and the ``flwr`` CLI), ``cert`` and ``key``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    cert_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "privnerf deployment CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                       x509.IPAddress(ipaddress.ip_address("::1"))])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": cert_dir / "ca.crt", "cert": cert_dir / "server.pem", "key": cert_dir / "server.key"}
    pem = serialization.Encoding.PEM
    paths["ca"].write_bytes(ca_cert.public_bytes(pem))
    paths["cert"].write_bytes(cert.public_bytes(pem))
    _write_private(paths["key"], key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    # the CA's key is not needed after signing: it is not kept, so nothing else can be issued under this CA
    return paths


def make_supernode_keys(key_dir: Path, name: str) -> tuple[Path, Path]:
    """An EC P-384 key pair for SuperNode authentication, in the OpenSSH formats Flower 1.41 reads
    (``flower-supernode --auth-supernode-private-key``: ``load_ssh_private_key``; ``flwr supernode register``:
    ``load_ssh_public_key``, a NIST curve). Returns ``(private, public)``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    priv, pub = key_dir / name, key_dir / f"{name}.pub"
    _write_private(priv, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                  serialization.PublicFormat.OpenSSH) + b"\n")
    return priv, pub


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


# -- processes ---------------------------------------------------------------------------------------------
def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free on ``host`` now (held open together while picking, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the command name (state first), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def descendants(pid: int) -> list[tuple[int, str]]:
    """``(pid, start time)`` of ``pid``'s live descendants (Linux ``/proc``; empty elsewhere). Flower starts
    its SuperExec and app processes in new sessions, so they are not in our process group: they are found by
    parent PID. The start time tells a PID that was reused by an unrelated process apart."""
    if not Path("/proc").is_dir():
        return []
    kids: dict[int, list[tuple[int, str]]] = {}
    for d in Path("/proc").glob("[0-9]*"):
        f = _stat(int(d.name))
        if f is not None:
            kids.setdefault(int(f[1]), []).append((int(d.name), f[19]))
    out, todo = [], [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c[0])
    return out


def _alive(pid: int, start: str | None = None) -> bool:
    """``pid`` runs (not a zombie) and, if ``start`` is given, is the process that started then."""
    f = _stat(pid)
    return f is not None and f[0] != "Z" and (start is None or f[19] == start)


def tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def flower_bin(name: str) -> str:
    """A Flower executable from this interpreter's environment (so the app processes Flower starts import
    this ``privnerf``), else from ``PATH``."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found (install flwr into this environment: pip install flwr)")
    return found


class Deployment:
    """A SuperLink and SuperNodes on loopback, each a separate process, and the ``flwr`` CLI to drive them.

    Use as a context manager: on exit every process started here (and the helpers Flower started below it)
    is stopped by PID."""

    def __init__(self, root: Path, tls: bool = True, auth: bool = True, host: str = "127.0.0.1"):
        if auth and not tls:
            raise ValueError("SuperNode authentication requires TLS (flower-superlink refuses "
                             "--enable-supernode-auth with --insecure)")
        self.root = Path(root).resolve()
        self.tls, self.auth, self.host = tls, auth, host
        self.log_dir = self.root / "deploy-logs"
        self.home = self.root / "flwr"          # FLWR_HOME of the flwr CLI (config.toml)
        self.cert_dir = self.root / "certs"
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self.certs: dict[str, Path] = {}
        self.port: int | None = None
        self.log_dir.mkdir(parents=True, exist_ok=True)

    # environment ---------------------------------------------------------------------------------------
    def env(self, home: Path) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        env["FLWR_HOME"] = str(home)
        env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
        env["FLWR_DISABLE_UPDATE_CHECK"] = "1"  # no network look-ups from any Flower process
        env["PYTHONUNBUFFERED"] = "1"
        return env

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _start(self, name: str, cmd: list[str], home: Path) -> subprocess.Popen:
        home.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as f:
            f.write(("$ " + " ".join(cmd) + "\n").encode())
            f.flush()
            p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=self.env(home), cwd=self.root, start_new_session=True)
        self.procs[name], self.logs[name] = p, log
        self._write_pids()
        return p

    @property
    def pid_file(self) -> Path:
        return self.log_dir / "pids"

    def _write_pids(self) -> None:
        """``deploy-logs/pids`` (``PID NAME`` per line) while processes run: what to stop by hand should this
        process itself be killed with SIGKILL. Removed once everything is stopped."""
        live = [f"{p.pid} {name}" for name, p in self.procs.items() if p.poll() is None]
        self.pid_file.write_text("".join(line + "\n" for line in live))

    def failure(self, name: str, what: str) -> DeploymentError:
        return DeploymentError(f"{name} {what} (log {self.logs.get(name, self.log_dir)}):\n"
                               f"{tail(self.logs[name]) if name in self.logs else ''}")

    def check_alive(self, names=None) -> None:
        """Raise :class:`DeploymentError` naming the first of ``names`` (default: all) that has exited."""
        for name in names if names is not None else list(self.procs):
            p = self.procs[name]
            if p.poll() is not None:
                raise self.failure(name, f"exited early with code {p.returncode}")

    # SuperLink -----------------------------------------------------------------------------------------
    def start_superlink(self, timeout: float = 60.0) -> None:
        self.port = free_ports(1, self.host)[0]
        cmd = [flower_bin("flower-superlink"), "--host", self.host, "--port", str(self.port),
               # the app's dependencies are this environment; never `uv sync` (no network needed)
               "--disable-runtime-dependency-installation"]
        if self.tls:
            self.certs = make_tls_certificates(self.cert_dir)
            cmd += ["--ssl-ca-certfile", str(self.certs["ca"]), "--ssl-certfile", str(self.certs["cert"]),
                    "--ssl-keyfile", str(self.certs["key"])]
        else:
            cmd += ["--insecure"]
        if self.auth:
            cmd += ["--enable-supernode-auth"]
        self._start("superlink", cmd, self.home / "superlink")
        self._write_cli_config()
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive(["superlink"])
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise self.failure("superlink", f"did not listen on {self.address} within {timeout:.0f} s")
                time.sleep(0.3)

    def _write_cli_config(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        lines = ["[superlink]", f'default = "{PROFILE}"', "", f"[superlink.{PROFILE}]",
                 f'address = "{self.address}"']
        if self.tls:
            lines.append(f"root-certificates = {json.dumps(str(self.certs['ca']))}")
        else:
            lines.append("insecure = true")
        (self.home / "config.toml").write_text("\n".join(lines) + "\n")

    # the flwr CLI ----------------------------------------------------------------------------------------
    def flwr(self, *args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [flower_bin("flwr"), *args]
        r = subprocess.run(cmd, capture_output=True, text=True, env=self.env(self.home), cwd=self.root,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        with open(self.log_dir / "flwr-cli.log", "a") as f:
            f.write(f"$ {' '.join(cmd)}\n{r.stdout}{r.stderr}[exit {r.returncode}]\n")
        if check and r.returncode != 0:
            raise DeploymentError(f"`flwr {' '.join(args)}` failed with code {r.returncode}:\n"
                                  f"{(r.stdout + r.stderr)[-3000:]}")
        return r

    def flwr_json(self, *args: str, **kw) -> Any:
        r = self.flwr(*args, "--format", "json", **kw)
        text = r.stdout
        try:
            return json.loads(text[text.index("{"):])
        except ValueError as e:
            raise DeploymentError(f"`flwr {' '.join(args)}` printed no JSON:\n{(r.stdout + r.stderr)[-3000:]}") from e

    def register(self, public_key: Path) -> int:
        """Register a SuperNode's public key with the SuperLink (``flwr supernode register``); its node id."""
        out = self.flwr_json("supernode", "register", str(public_key), PROFILE)
        if not out.get("success", True):
            raise DeploymentError(f"registering {public_key} failed: {out}")
        return int(out.get("node-id", out.get("node_id", 0)))

    def supernodes(self) -> list[dict]:
        """``flwr supernode list``: the SuperNodes the SuperLink knows (registered or connected)."""
        out = self.flwr_json("supernode", "list", PROFILE)
        return list(out.get("nodes", []))

    # SuperNodes ----------------------------------------------------------------------------------------
    def make_key(self, name: str) -> tuple[Path, Path]:
        return make_supernode_keys(self.cert_dir / "supernodes", name)

    def start_supernode(self, name: str, node_config: str, private_key: Path | None = None,
                        extra: list[str] | None = None) -> subprocess.Popen:
        port = free_ports(1, self.host)[0]
        cmd = [flower_bin("flower-supernode"), "--superlink", self.address, "--host", self.host,
               "--port", str(port), "--node-config", node_config]
        cmd += ["--root-certificates", str(self.certs["ca"])] if self.tls else ["--insecure"]
        if private_key is not None:
            cmd += ["--auth-supernode-private-key", str(private_key)]
        cmd += list(extra or [])
        return self._start(name, cmd, self.home / name)

    def wait_online(self, n: int, names: list[str], timeout: float = 120.0) -> list[dict]:
        """Wait until ``n`` SuperNodes are online at the SuperLink (raising if one of ``names`` exits)."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive(["superlink", *names])
            nodes = self.supernodes()
            online = [nd for nd in nodes if str(nd.get("status", "")).lower() == "online"]
            if len(online) >= n:
                return nodes
            if time.monotonic() > deadline:
                raise DeploymentError(f"only {len(online)} of {n} SuperNodes came online within {timeout:.0f} s: "
                                      f"{nodes}")
            time.sleep(1.0)

    # the run -------------------------------------------------------------------------------------------
    def submit(self, app_dir: Path) -> subprocess.Popen:
        """``flwr run APP deploy --stream`` (its output, the run's logs, goes to ``deploy-logs/flwr-run.log``)."""
        return self._start("flwr-run", [flower_bin("flwr"), "run", str(app_dir), PROFILE, "--stream"], self.home)

    # teardown ------------------------------------------------------------------------------------------
    def stop(self, grace: float = 10.0) -> None:
        """Stop every process started here, newest first, and the processes Flower started below them (by PID:
        SIGTERM, then SIGKILL after ``grace`` seconds). A second Ctrl-C does not interrupt it."""
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
        try:
            self._stop(grace)
        finally:
            if main:
                signal.signal(signal.SIGINT, previous)

    def _stop(self, grace: float) -> None:
        for name in reversed(list(self.procs)):
            p = self.procs[name]
            tree = descendants(p.pid) if p.poll() is None else []
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                    p.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout=grace)
                except ProcessLookupError:
                    pass
            # helpers (SuperExec, app processes) exit on their own when their parent goes; make sure
            deadline = time.monotonic() + min(grace, 3.0)
            while any(_alive(*c) for c in tree) and time.monotonic() < deadline:
                time.sleep(0.1)
            for c in tree:
                if _alive(*c):
                    try:
                        os.kill(c[0], signal.SIGKILL)
                    except OSError:
                        pass
        if all(p.poll() is not None for p in self.procs.values()):
            self.pid_file.unlink(missing_ok=True)
        else:
            self._write_pids()

    def __enter__(self) -> "Deployment":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# -- the app -----------------------------------------------------------------------------------------------
def write_app(app_dir: Path, config_json: Path) -> Path:
    """A minimal Flower App: ``pyproject.toml`` naming :mod:`privnerf.fed.apps` and the run's config file."""
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(f"""\
# Written by privnerf.fed.deploy: the Flower App that `flwr run` bundles and sends to the SuperLink.
# The code is the installed privnerf package; the run's configuration is the file named by config-json.
[project]
name = "privnerf-fed"
version = "0.1.0"
description = "DecentNeRF and baselines on the Flower Deployment Engine"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "privnerf"

[tool.flwr.app.components]
serverapp = "privnerf.fed.apps:server_app"
clientapp = "privnerf.fed.apps:client_app"

[tool.flwr.app.config]
config-json = {json.dumps(str(config_json.resolve()))}
""")
    return app_dir


def prepare_deployment(cfg: FedConfig) -> Path:
    """The run directory with ``config.json`` and the Flower App ``app/`` (nothing started): what
    :func:`run_deployment` starts from, and what a by-hand deployment needs (docs/federation-deployment.md)."""
    from privnerf.fed.run import default_run_dir, prepare_run

    if cfg.one_trainer:
        raise ValueError(f"the {cfg.aggregator} baseline has no federation; run it with --engine simulation")
    # absolute paths in config.json: Flower's app processes run in other working directories
    if cfg.data and Path(cfg.data).exists():
        cfg.data = str(Path(cfg.data).resolve())
    cfg.output = Path(cfg.output if cfg.output is not None else default_run_dir(cfg)).resolve()
    run_dir = prepare_run(cfg)
    write_app(run_dir / "app", run_dir / "config.json")
    return run_dir


def run_deployment(cfg: FedConfig, timeout: float | None = None, online_timeout: float = 180.0) -> dict[str, Any]:
    """Run ``cfg`` on the Deployment Engine (TLS and SuperNode authentication unless ``cfg.insecure``) and
    return the results in ``results.json``. ``timeout`` (seconds, default none) bounds the run itself."""
    run_dir = prepare_deployment(cfg)
    with _sigterm_as_exit():
        return _run(cfg, run_dir, timeout, online_timeout)


@contextlib.contextmanager
def _sigterm_as_exit():
    """SIGTERM raises SystemExit (as Ctrl-C raises KeyboardInterrupt), so the processes are still stopped."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(cfg: FedConfig, run_dir: Path, timeout: float | None, online_timeout: float) -> dict[str, Any]:
    results_path = run_dir / "results.json"
    before = results_path.stat().st_mtime_ns if results_path.exists() else None
    app = run_dir / "app"
    secure = not cfg.insecure
    names = [f"supernode-{k}" for k in range(cfg.num_users)]
    with Deployment(run_dir, tls=secure, auth=secure) as dep:
        dep.start_superlink()
        keys: dict[str, Path | None] = {n: None for n in names}
        if dep.auth:
            for name in names:
                priv, pub = dep.make_key(name)
                dep.register(pub)
                keys[name] = priv
        for k, name in enumerate(names):
            dep.start_supernode(name, f"user-id={k}", keys[name])
        dep.wait_online(cfg.num_users, names, timeout=online_timeout)
        run = dep.submit(app)
        t0 = time.monotonic()
        done_at = None
        while True:
            dep.check_alive(["superlink", *names])
            finished = results_path.exists() and results_path.stat().st_mtime_ns != before
            if run.poll() is not None:
                if finished:
                    break
                raise dep.failure("flwr-run", f"ended (code {run.returncode}) without writing {results_path}; "
                                  f"the SuperLink's log is {dep.logs['superlink']}, the run's log below")
            if finished:  # the stream normally ends with the run; do not wait for it forever
                done_at = done_at or time.monotonic()
                if time.monotonic() - done_at > 60:
                    break
            if timeout is not None and time.monotonic() - t0 > timeout:
                raise dep.failure("flwr-run", f"did not finish within {timeout:.0f} s")
            time.sleep(1.0)
    results = json.loads(results_path.read_text())
    report = run_dir / "report.html"
    if report.exists():
        results["report"] = str(report)
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m privnerf.fed.deploy prepare [privnerf fed run flags]``: write the run directory's
    ``config.json`` and ``app/`` and print the directory, for starting the processes by hand."""
    import tyro

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "prepare":
        print("usage: python -m privnerf.fed.deploy prepare --data CROWD --output RUN_DIR [privnerf fed run flags]",
              file=sys.stderr)
        return 2
    cfg = tyro.cli(FedConfig, args=argv[1:], prog="python -m privnerf.fed.deploy prepare",
                   description="Prepare a run for the Deployment Engine: config.json and the Flower App.")
    if not cfg.data:
        print("error: --data is required", file=sys.stderr)
        return 2
    cfg.engine = "deployment"
    print(prepare_deployment(cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
