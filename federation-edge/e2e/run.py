#!/usr/bin/env python3
"""End-to-end federation test: two real Synapses federating over hyphae edges and routers.

The harness itself is Python 3 standard library only. Synapse runs from its own venv (created
once under the work dir, or given by HYPHAE_E2E_VENV). Every child process is started in its own
session and stopped on exit, failure, SIGTERM or Ctrl-C. See README.md beside this file.

Modes:
  direct              the two Synapses federate directly (names localhost:8481/8482, no edge);
                      checks the scenario and the harness themselves
  edges               hs-a -> edge A -> router A <-> router B -> edge B -> hs-b
  edges-stock-middle  as edges, but routers A and B peer only with a stock mycelium node
  edges-stock-router  as edges, but router B is a stock mycelium node (edge B uses its
                      HTTP message API)

Exit status: 0 on success (or SKIPPED when a stock mode has no stock binary), 1 on failure,
2 on usage or setup errors. With HYPHAE_REQUIRE_CAPABILITIES set (to anything but empty or 0, as
.ci/run does) a missing stock binary is a setup error, not a skip.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

SYNAPSE_VERSION = "1.163.2"
REPO = Path(__file__).resolve().parents[2]
MODES = ("direct", "edges", "edges-stock-middle", "edges-stock-router")

# Burst sizes and timeouts. One mode stays well under four minutes on a 2-vCPU machine.
MESSAGES_PER_SIDE = 100
PARALLEL_SENDS = 4  # client requests in flight per side
DELIVERY_TIMEOUT = 180.0
SYNAPSE_START_TIMEOUT = 120.0
ROUTE_TIMEOUT = 60.0
STOCK_ROUTE_WAIT = 15.0  # edges-stock-middle: see Run.initial_routes
ROUTE_RECHECK = 10.0  # after a router restart: how long to watch for the routes (no failure)
DOWNTIME = 2.0  # seconds a restarted component stays down

T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[e2e {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


class Failure(Exception):
    """The scenario failed: reported on one line, logs kept."""


class SetupError(Exception):
    """The harness could not set up (missing binary, busy port, pip failure)."""


# --------------------------------------------------------------------------------------------
# HTTP (never through a proxy: the harness talks to loopback services only)

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method: str, url: str, body=None, token: str | None = None, timeout: float = 30.0):
    """Returns (status, parsed JSON or text). Status None means no HTTP answer (the error text)."""
    data = None
    headers = {}
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        return None, str(getattr(e, "reason", e))
    try:
        return status, json.loads(raw) if raw else {}
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_until(what: str, check, timeout: float, interval: float = 0.25, alive=None):
    """Polls check() until it returns a truthy value; raises Failure after timeout."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if alive is not None:
            alive()
        try:
            last = check()
        except Exception as e:  # noqa: BLE001 - report the last error on timeout
            last = e
        else:
            if last:
                return last
        time.sleep(interval)
    raise Failure(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


# --------------------------------------------------------------------------------------------
# Child processes


class Proc:
    """One child process, started in its own session so that its whole group can be stopped."""

    registry: list["Proc"] = []

    def __init__(self, name: str, argv: list[str], logfile: Path, env=None, cwd=None):
        self.name, self.argv, self.logfile, self.env, self.cwd = name, argv, logfile, env, cwd
        self.popen: subprocess.Popen | None = None
        Proc.registry.append(self)

    def start(self) -> "Proc":
        with open(self.logfile, "ab") as out:
            out.write(f"\n=== start {time.strftime('%H:%M:%S')}: {' '.join(self.argv)}\n".encode())
            out.flush()
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=self.env, cwd=self.cwd, start_new_session=True)
        return self

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            code = self.popen.returncode
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            if code in (0, -signal.SIGTERM, -signal.SIGKILL, -signal.SIGINT):
                how += " (a clean stop: something outside this harness stopped it?)"
            raise Failure(f"{self.name} {how} (log: {self.logfile}){tail(self.logfile)}")

    def stop(self, timeout: float = 15.0) -> None:
        p = self.popen
        if p is None:
            return
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name} ignored SIGTERM for {timeout:.0f} s; killing it")
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        else:
            # Reap anything the group left behind (the leader is gone already).
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.popen = None

    @classmethod
    def stop_all(cls) -> None:
        for proc in reversed(cls.registry):
            try:
                proc.stop(timeout=10.0)
            except Exception as e:  # noqa: BLE001 - keep stopping the others
                print(f"e2e: stopping {proc.name}: {e}", file=sys.stderr)


def tail(path: Path, lines: int = 12) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "".join(f"\n    | {line}" for line in text)


def run(argv: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise SetupError(f"{what} failed (status {res.returncode}): {' '.join(map(str, argv))}\n"
                         f"{res.stdout[-2000:]}{res.stderr[-2000:]}")
    return res


# --------------------------------------------------------------------------------------------
# Ports


class Ports:
    """Hands out loopback ports that are free for both TCP and UDP, below the ephemeral range."""

    def __init__(self) -> None:
        self.taken: set[int] = set()
        self.rng = secrets.SystemRandom()

    @staticmethod
    def free(port: int) -> bool:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as s:
                if kind == socket.SOCK_STREAM:
                    # As the servers do: a port whose old connections sit in TIME_WAIT is free.
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    return False
        return True

    def get(self) -> int:
        for _ in range(1000):
            port = self.rng.randrange(20000, 32000)
            if port not in self.taken and self.free(port):
                self.taken.add(port)
                return port
        raise SetupError("no free loopback port found")

    def fixed(self, port: int) -> int:
        if port in self.taken or not self.free(port):
            raise SetupError(f"port {port} is busy (direct mode needs 8481 and 8482)")
        self.taken.add(port)
        return port


# --------------------------------------------------------------------------------------------
# Synapse venv and private CA


def ensure_venv(workdir: Path) -> Path:
    """Returns the venv's python, creating the venv and installing Synapse if needed."""
    given = os.environ.get("HYPHAE_E2E_VENV")
    venv = Path(given) if given else workdir / "venv"
    with open(workdir / "venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # runs of other modes may be creating it right now
        return _ensure_venv(venv, given)


def _ensure_venv(venv: Path, given: str | None) -> Path:
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import synapse, sys; sys.stdout.write(synapse.__version__)"]
    if py.exists():
        res = subprocess.run(probe, capture_output=True, text=True, cwd="/")
        if res.returncode == 0 and (res.stdout.split() or [""])[0] == SYNAPSE_VERSION:
            return py
        if given:
            raise SetupError(f"HYPHAE_E2E_VENV={given} holds no Synapse {SYNAPSE_VERSION} "
                             f"({(res.stdout + res.stderr).strip()[-300:]})")
    log(f"creating the Synapse venv at {venv} (once; matrix-synapse=={SYNAPSE_VERSION})")
    res = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    if res.returncode != 0:
        # Debian's python3 lacks ensurepip until python3-venv is installed.
        if os.geteuid() == 0 and shutil.which("apt-get"):
            log("python3 -m venv failed; installing python3-venv with apt-get")
            shutil.rmtree(venv, ignore_errors=True)
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            run(["apt-get", "update", "-qq"], "apt-get update", env=env)
            ver = f"python{sys.version_info.major}.{sys.version_info.minor}-venv"
            if subprocess.run(["apt-get", "install", "-y", "-qq", ver], env=env,
                              capture_output=True).returncode != 0:
                run(["apt-get", "install", "-y", "-qq", "python3-venv"], "apt-get install", env=env)
            run([sys.executable, "-m", "venv", str(venv)], "python3 -m venv")
        else:
            raise SetupError(f"python3 -m venv failed (install python3-venv): {res.stderr[-500:]}")
    run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         f"matrix-synapse=={SYNAPSE_VERSION}"], "pip install matrix-synapse", cwd="/")
    res = run(probe, "importing synapse", cwd="/")
    log(f"Synapse {res.stdout.split()[0]} installed")
    return py


def make_ca(cadir: Path) -> dict:
    """A private CA and one leaf (SAN DNS:localhost, IP:127.0.0.1) for the federation listeners."""
    cadir.mkdir(parents=True, exist_ok=True)
    ossl = shutil.which("openssl")
    if not ossl:
        raise SetupError("openssl is not installed")
    ca_key, ca_crt = cadir / "ca.key", cadir / "ca.crt"
    key, csr, crt, ext = (cadir / n for n in ("hs.key", "hs.csr", "hs.crt", "hs.ext"))
    run([ossl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
         "-out", str(ca_crt), "-days", "30", "-subj", "/CN=hyphae e2e homeserver CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"], "openssl (CA)")
    run([ossl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
         "-subj", "/CN=localhost"], "openssl (leaf request)")
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\n")
    run([ossl, "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
         "-CAcreateserial", "-out", str(crt), "-days", "30", "-extfile", str(ext)],
        "openssl (leaf)")
    return {"ca": ca_crt, "cert": crt, "key": key}


SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


# --------------------------------------------------------------------------------------------
# Synapse


class Homeserver:
    def __init__(self, label: str, server_name: str, root: Path, client_port: int,
                 fed_port: int, python: Path):
        self.label, self.server_name, self.dir = label, server_name, root / f"hs-{label}"
        self.client_port, self.fed_port, self.python = client_port, fed_port, python
        self.config = self.dir / "homeserver.yaml"
        self.logfile = self.dir / "homeserver.log"
        self.secret = secrets.token_urlsafe(32)
        self.url = f"http://127.0.0.1:{client_port}"
        self.proc: Proc | None = None
        self.env: dict | None = None

    def write_config(self, tls: dict, ca_list: list[Path], direct: bool, peers: list[str],
                     proxy_port: int | None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "media_store").mkdir(exist_ok=True)
        log_config = self.dir / "log.config"
        # JSON is YAML: Synapse reads both files with yaml.safe_load.
        log_config.write_text(json.dumps({
            "version": 1,
            "formatters": {"precise": {"format": "%(asctime)s - %(name)s - %(lineno)d - "
                                                 "%(levelname)s - %(request)s - %(message)s"}},
            "handlers": {"file": {"class": "logging.FileHandler", "formatter": "precise",
                                  "filename": str(self.logfile), "encoding": "utf8"}},
            "loggers": {"synapse.storage.SQL": {"level": "INFO"}},
            "root": {"level": "INFO", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }, indent=2) + "\n")
        lots = {"per_second": 10000, "burst_count": 10000}
        cfg = {
            "server_name": self.server_name,
            "pid_file": str(self.dir / "homeserver.pid"),
            "listeners": [
                {"port": self.client_port, "bind_addresses": ["127.0.0.1"], "type": "http",
                 "tls": False, "x_forwarded": False,
                 "resources": [{"names": ["client"], "compress": False}]},
                # 'federation' also mounts /_matrix/key.
                {"port": self.fed_port, "bind_addresses": ["127.0.0.1"], "type": "http",
                 "tls": True, "resources": [{"names": ["federation"], "compress": False}]},
            ],
            "tls_certificate_path": str(tls["cert"]),
            "tls_private_key_path": str(tls["key"]),
            # Replaces the platform trust store for federation (first certificate of each file).
            "federation_custom_ca_list": [str(p) for p in ca_list],
            "federation_verify_certificates": True,
            "federation_domain_whitelist": peers,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "database": {"name": "sqlite3",
                         "args": {"database": str(self.dir / "homeserver.db")}},
            "log_config": str(log_config),
            "media_store_path": str(self.dir / "media_store"),
            "signing_key_path": str(self.dir / "signing.key"),
            "registration_shared_secret": self.secret,
            "macaroon_secret_key": secrets.token_urlsafe(32),
            "form_secret": secrets.token_urlsafe(32),
            "enable_registration": False,
            "report_stats": False,
            "enable_metrics": False,
            # Loopback bursts: lift every rate limit the scenario touches.
            "rc_message": lots,
            "rc_registration": lots,
            "rc_room_creation": lots,
            "rc_login": {"address": lots, "account": lots, "failed_attempts": lots},
            "rc_joins": {"local": lots, "remote": lots},
            "rc_joins_per_room": lots,
            "rc_invites": {"per_room": lots, "per_user": lots, "per_issuer": lots},
            "rc_presence": {"per_user": lots},
            "rc_federation": {"window_size": 1000, "sleep_limit": 10000, "sleep_delay": 10,
                              "reject_limit": 100000, "concurrent": 100},
        }
        if direct:
            # The default ip_range_blacklist holds 127.0.0.0/8 and ::1.
            cfg["ip_range_whitelist"] = ["127.0.0.1/32", "::1/128"]
        self.config.write_text(json.dumps(cfg, indent=2) + "\n")
        run([str(self.python), "-m", "synapse.app.homeserver", "-c", str(self.config),
             "--generate-keys"], f"Synapse {self.label}: --generate-keys", cwd=str(self.dir))
        env = {k: v for k, v in os.environ.items()
               if k.lower() not in ("http_proxy", "https_proxy", "no_proxy", "all_proxy")}
        if proxy_port is not None:
            env["https_proxy"] = f"http://127.0.0.1:{proxy_port}"
            env["no_proxy"] = "localhost,127.0.0.1,::1"
        self.env = env

    def start(self) -> None:
        self.proc = Proc(f"Synapse {self.label} ({self.server_name})",
                         [str(self.python), "-m", "synapse.app.homeserver", "-c", str(self.config)],
                         self.dir / "stdout.log", env=self.env, cwd=str(self.dir)).start()

    def wait_ready(self) -> None:
        wait_until(f"Synapse {self.label}'s client API",
                   lambda: http("GET", f"{self.url}/_matrix/client/versions", timeout=5)[0] == 200,
                   SYNAPSE_START_TIMEOUT, 0.5, alive=self.proc.check_alive)

    def register(self, user: str) -> dict:
        """Registers a user through the shared-secret admin API; returns the login response."""
        status, body = http("GET", f"{self.url}/_synapse/admin/v1/register")
        if status != 200:
            raise Failure(f"Synapse {self.label}: register nonce: {status} {body}")
        password = secrets.token_urlsafe(16)
        mac = hmac.new(self.secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([body["nonce"].encode(), user.encode(), password.encode(),
                                 b"notadmin"]))
        status, res = http("POST", f"{self.url}/_synapse/admin/v1/register", {
            "nonce": body["nonce"], "username": user, "password": password,
            "admin": False, "mac": mac.hexdigest()})
        if status != 200:
            raise Failure(f"Synapse {self.label}: registering {user}: {status} {res}")
        res["hs"] = self
        return res


def q(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def client(method: str, user: dict, path: str, body=None, timeout: float = 120.0):
    return http(method, f"{user['hs'].url}/_matrix/client/v3{path}", body,
                token=user["access_token"], timeout=timeout)


def expect(what: str, res, ok=(200,)):
    status, body = res
    if status not in ok:
        raise Failure(f"{what}: {status} {body}")
    return body


# --------------------------------------------------------------------------------------------
# Routers and edges


def router_bin() -> Path:
    # Resolved here: the daemons start in their run directories.
    return Path(os.environ.get("HYPHAE_ROUTER_BIN", REPO / "target/debug/hyphae-router")).resolve()


def edge_bin() -> Path:
    return Path(os.environ.get("HYPHAE_EDGE_BIN", REPO / "target/debug/hyphae-edge")).resolve()


def stock_bin() -> Path:
    return Path(os.environ.get("HYPHAE_STOCK_MYCELIUM",
                               REPO.parent / "shared/bin/mycelium-0.7.10"))


class Router:
    """A hyphae-router, or a stock mycelium node (stock=True)."""

    def __init__(self, label: str, root: Path, ports: Ports, stock: bool = False):
        self.label, self.stock = label, stock
        self.dir = root / f"router-{label}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tcp, self.quic, self.api_port = ports.get(), ports.get(), ports.get()
        self.jsonrpc = ports.get() if stock else None
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.sock = self.dir / "router.sock"
        self.peers: list[str] = []
        self.proc: Proc | None = None
        self.pubkey = self.subnet = None
        kind = "stock mycelium" if stock else "hyphae-router"
        self.name = f"router {label} ({kind})"

    def argv(self) -> list[str]:
        common = ["-k", str(self.dir / "priv_key.bin"), "--no-tun", "--disable-peer-discovery",
                  "-t", str(self.tcp), "-q", str(self.quic),
                  "--api-addr", f"127.0.0.1:{self.api_port}"]
        if self.stock:
            cfg = self.dir / "mycelium.toml"
            cfg.write_text("peers = [" + ", ".join(json.dumps(p) for p in self.peers) + "]\n")
            return [str(stock_bin()), *common, "-c", str(cfg),
                    "--jsonrpc-addr", f"127.0.0.1:{self.jsonrpc}"]
        argv = [str(router_bin()), *common, "--local-socket", str(self.sock)]
        if self.peers:
            argv += ["--peers", *self.peers]
        return argv

    def start(self) -> None:
        if self.proc is None:
            self.proc = Proc(self.name, self.argv(), self.dir / "router.log", cwd=str(self.dir))
        self.proc.start()

    def wait_ready(self) -> None:
        def admin():
            status, body = http("GET", f"{self.api}/api/v1/admin", timeout=3)
            return body if status == 200 and isinstance(body, dict) else None
        info = wait_until(f"{self.name}'s API", admin, 30, alive=self.proc.check_alive)
        self.pubkey = info.get("nodePubkey") or info.get("publicKey")
        self.subnet = info.get("nodeSubnet")
        if not self.pubkey or not self.subnet:
            raise Failure(f"{self.name}: /api/v1/admin lacks nodePubkey/nodeSubnet: {info}")

    def selected_subnets(self) -> set[str]:
        status, body = http("GET", f"{self.api}/api/v1/admin/routes/selected", timeout=3)
        if status != 200 or not isinstance(body, list):
            return set()
        return {r.get("subnet") for r in body if isinstance(r, dict)}


class Edge:
    def __init__(self, label: str, root: Path, ports: Ports, hs: Homeserver, router: Router,
                 tls: dict):
        self.label, self.hs, self.router = label, hs, router
        self.dir = root / f"edge-{label}"
        self.state = self.dir / "state"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proxy_port, self.api_port = ports.get(), ports.get()
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.config = self.dir / "edge.toml"
        self.name = f"edge {label}"
        self.proc: Proc | None = None
        self.ca: Path | None = None  # the edge's site CA, once init has made it
        if router.stock:
            router_url = router.api  # the stock node's HTTP message API
        else:
            router_url = f"unix:{router.sock}"
        s = json.dumps  # a TOML basic string is a JSON string for these values
        self.config.write_text(
            f"proxy = {s(f'127.0.0.1:{self.proxy_port}')}\n"
            f"api = {s(f'127.0.0.1:{self.api_port}')}\n"
            f"router = {s(router_url)}\n"
            f"router_api = {s(router.api)}\n"
            f"state_dir = {s(str(self.state))}\n"
            f"tunnel_allow = [\"127.0.0.0/8\"]\n"
            f"\n[homeserver]\n"
            f"server_names = [{s(hs.server_name)}]\n"
            f"federation_url = {s(f'https://127.0.0.1:{hs.fed_port}')}\n"
            f"ca_file = {s(str(tls['ca']))}\n")

    def init(self) -> Path:
        res = run([str(edge_bin()), "--config", str(self.config), "init"],
                  f"{self.name}: hyphae-edge init", cwd=str(self.dir))
        (self.dir / "init.out").write_text(res.stdout + res.stderr)
        ca = self.state / "ca.crt"
        if not ca.exists():
            raise SetupError(f"{self.name}: init made no {ca}")
        return ca

    def start(self) -> None:
        if self.proc is None:
            self.proc = Proc(self.name, [str(edge_bin()), "--config", str(self.config)],
                             self.dir / "edge.log", cwd=str(self.dir))
        self.proc.start()

    def wait_ready(self) -> None:
        wait_until(f"{self.name}'s bridge API",
                   lambda: http("GET", f"{self.api}/api/v1/bridge/status", timeout=3)[0] == 200,
                   30, alive=self.proc.check_alive)

    def add_route(self, server_name: str, pubkey: str) -> None:
        status, body = http("POST", f"{self.api}/api/v1/bridge/routes",
                            {"server_name": server_name, "pubkey": pubkey, "fallback": "never"})
        if status is None or not 200 <= status < 300:
            raise Failure(f"{self.name}: adding the route to {server_name}: {status} {body}")


# --------------------------------------------------------------------------------------------
# The scenario


class Side:
    def __init__(self, label: str, user: dict):
        self.label, self.user = label, user
        self.sent: dict[str, list[str]] = {}  # phase -> bodies whose send returned 200
        self.lock = threading.Lock()


def send_message(side: Side, room: str, body: str) -> None:
    txn = hashlib.sha1(body.encode()).hexdigest()[:16]
    path = f"/rooms/{q(room)}/send/m.room.message/{txn}"
    for attempt in range(10):  # same txnId: idempotent at the client API
        status, res = client("PUT", side.user, path, {"msgtype": "m.text", "body": body},
                             timeout=60)
        if status == 200:
            return
        time.sleep(min(0.5 * 2 ** attempt, 5))
    raise Failure(f"{side.label}: sending {body!r}: {status} {res}")


class Gates:
    """Points in a burst where every sender waits until the main thread lets it on."""

    def __init__(self, at: list[int], senders: int):
        self.reached = {i: threading.Semaphore(0) for i in at}
        self.go = {i: threading.Event() for i in at}
        self.senders = senders
        self.aborted = threading.Event()

    def pass_(self, i: int) -> None:
        if i in self.go:
            self.reached[i].release()
            while not self.go[i].wait(0.2):
                if self.aborted.is_set():
                    raise Failure("burst aborted")

    def wait_all(self, i: int, timeout: float = 120.0) -> None:
        for _ in range(self.senders):
            if not self.reached[i].acquire(timeout=timeout):
                raise Failure(f"senders did not reach message {i} in {timeout:.0f} s")
            if self.aborted.is_set():
                raise Failure("a sender failed")

    def open(self, i: int) -> None:
        self.go[i].set()


class Burst:
    """n messages from each side, PARALLEL_SENDS client requests in flight per side, sent from
    background threads; paced and stopped at gates when given."""

    def __init__(self, sides: list[Side], room: str, phase: str, n: int, tag: str,
                 pace: float = 0.0, gates: Gates | None = None):
        self.sides, self.room, self.phase, self.n, self.tag = sides, room, phase, n, tag
        self.pace, self.gates = pace, gates
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._side, args=(side,), daemon=True)
                        for side in sides]
        for side in sides:
            side.sent[phase] = []
        for t in self.threads:
            t.start()

    def _side(self, side: Side) -> None:
        gates = self.gates
        try:
            with concurrent.futures.ThreadPoolExecutor(PARALLEL_SENDS) as pool:
                i = 0
                while i < self.n:
                    if gates:
                        gates.pass_(i)
                    group = []
                    while i < self.n and len(group) < PARALLEL_SENDS:
                        group.append(f"{self.tag} {self.phase} {side.label} {i:03d}")
                        i += 1
                        if gates and i in gates.go:
                            break  # the next group starts at the gate
                    futures = [pool.submit(send_message, side, self.room, b) for b in group]
                    for body, fut in zip(group, futures):
                        fut.result()
                        with side.lock:
                            side.sent[self.phase].append(body)
                    if gates and gates.aborted.is_set():
                        raise Failure("burst aborted")
                    if self.pace:
                        time.sleep(self.pace)
        except BaseException as e:  # noqa: BLE001 - re-raised by join()
            self.errors.append(e)
            if gates:
                gates.aborted.set()
                for sem in gates.reached.values():
                    sem.release()  # the main thread must not wait for this sender

    def join(self) -> None:
        """Waits for both senders; raises the first sender's error (its own, if any)."""
        for t in self.threads:
            t.join()
        own = self.own_errors()
        if own or self.errors:
            raise (own or self.errors)[0]

    def own_errors(self, timeout: float | None = None) -> list[BaseException]:
        """The senders' errors other than being aborted, after waiting for them."""
        for t in self.threads:
            t.join(timeout)
        return [e for e in self.errors if str(e) != "burst aborted"]


def room_bodies(user: dict, room: str, tag: str) -> set[str]:
    """All m.room.message bodies carrying tag that user's homeserver holds for the room."""
    found: set[str] = set()
    frm = None
    filt = q(json.dumps({"types": ["m.room.message"]}))
    for _ in range(50):
        path = f"/rooms/{q(room)}/messages?dir=b&limit=500&filter={filt}"
        if frm:
            path += f"&from={q(frm)}"
        status, body = client("GET", user, path, timeout=30)
        if status != 200:
            raise Failure(f"reading messages on {user['hs'].label}: {status} {body}")
        chunk = body.get("chunk", [])
        for ev in chunk:
            text = ev.get("content", {}).get("body", "")
            if isinstance(text, str) and text.startswith(tag):
                found.add(text)
        frm = body.get("end")
        if not chunk or not frm:
            break
    return found


def ranges(nums: list[int]) -> str:
    out, start, prev = [], None, None
    for n in sorted(nums) + [None]:
        if start is None:
            start = prev = n
        elif n is not None and n == prev + 1:
            prev = n
        else:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = n
    return ", ".join(out)


def verify(sides: list[Side], room: str, phase: str, tag: str, sent_done: float) -> str:
    """Waits until every homeserver holds every message of the phase; returns a summary."""
    expected = {s.label: set(s.sent[phase]) for s in sides}
    want = set().union(*expected.values())
    deadline = sent_done + DELIVERY_TIMEOUT
    arrived_at: dict[str, float] = {}
    missing: dict[str, set[str]] = {}
    while True:
        for reader in sides:
            if reader.label in arrived_at:
                continue
            have = room_bodies(reader.user, room, f"{tag} {phase} ")
            missing[reader.label] = want - have
            if not missing[reader.label]:
                arrived_at[reader.label] = time.monotonic()
        if len(arrived_at) == len(sides) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    lines = []
    for reader in sides:
        for sender in sides:
            if sender is reader:
                continue
            lost = [int(b.rsplit(" ", 1)[1]) for b in missing[reader.label]
                    if b in expected[sender.label]]
            got = len(expected[sender.label]) - len(lost)
            lines.append(f"{sender.label}->{reader.label} {got}/{len(expected[sender.label])}"
                         + (f" (missing #{ranges(lost)})" if lost else ""))
        own = [b for b in missing[reader.label] if b in expected[reader.label]]
        if own:
            lines.append(f"{reader.label} lacks {len(own)} of its own messages")
    summary = ", ".join(lines)
    if len(arrived_at) != len(sides):
        raise Failure(f"phase {phase}: not everything arrived within {DELIVERY_TIMEOUT:.0f} s "
                      f"of the last send: {summary}")
    took = max(arrived_at.values()) - sent_done
    return f"{summary}; all delivered {max(took, 0):.1f} s after the last send"


# 401 responses on federation, in Synapse's access log (inbound) and its federation client
# (outbound). A 401 means a relayed request no longer matched its X-Matrix signature.
FED_401 = [
    re.compile(r'\s401 "(?:GET|PUT|POST|DELETE|HEAD|OPTIONS) /_matrix/(?:federation|key)/'),
    re.compile(r"Got response headers: 401\b"),
    re.compile(r"\b401: Unauthori[sz]ed"),
    re.compile(r"HttpResponseException.*\b401\b"),
    re.compile(r"authenticate_request failed: 401\b"),
    re.compile(r"SynapseError: 401\b"),
]


def find_401s(homeservers: list[Homeserver]) -> list[str]:
    hits = []
    for hs in homeservers:
        try:
            lines = hs.logfile.read_text(errors="replace").splitlines()
        except OSError as e:
            raise Failure(f"reading {hs.logfile}: {e}")
        for line in lines:
            if any(p.search(line) for p in FED_401):
                hits.append(f"hs-{hs.label}: {line.strip()[:300]}")
    return hits


# --------------------------------------------------------------------------------------------
# The run


class Run:
    def __init__(self, args):
        self.args = args
        self.mode = args.mode
        self.edges_mode = args.mode != "direct"
        self.workdir = Path(args.workdir).resolve()
        self.root = self.workdir / f"{args.mode}-{args.names}"
        self.ports = Ports()
        self.tag = f"e2e-{secrets.token_hex(3)}"
        self.restarts: list[str] = []
        self.checked_401 = False
        self.results: list[str] = []
        self.routers: list[Router] = []
        self.edges: list[Edge] = []

    def setup(self) -> None:
        a = self.args
        if self.edges_mode:
            for what, path in (("hyphae-router", router_bin()), ("hyphae-edge", edge_bin())):
                if not path.exists():
                    raise SetupError(f"no {what} binary at {path} (build it: cargo build "
                                     f"-p hyphae-router -p hyphae-edge --locked)")
        # One run at a time per run directory (a second one would delete the first's files).
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.lock = open(self.workdir / f"{self.root.name}.lock", "w")
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SetupError(f"another run is using {self.root} (lock {self.lock.name})")
        python = ensure_venv(self.workdir)
        if self.root.exists():
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        log(f"mode {self.mode}, names {a.names}, run dir {self.root}")
        tls = make_ca(self.root / "ca")
        self.tls = tls

        if not self.edges_mode:
            fa, fb = self.ports.fixed(8481), self.ports.fixed(8482)
            names = ("localhost:8481", "localhost:8482")
        else:
            fa, fb = self.ports.get(), self.ports.get()
            names = (("hs-a.test:8448", "hs-b.test:8448") if a.names == "port"
                     else ("hs-a.test", "hs-b.test"))
        self.hs = [Homeserver("a", names[0], self.root, self.ports.get(), fa, python),
                   Homeserver("b", names[1], self.root, self.ports.get(), fb, python)]
        hs_a, hs_b = self.hs

        if not self.edges_mode:
            for hs in self.hs:
                hs.write_config(tls, [tls["ca"]], direct=True, peers=list(names),
                                proxy_port=None)
        else:
            self.setup_overlay(tls)
            for hs, edge in zip(self.hs, self.edges):
                ca_list = [edge.ca]
                if SYSTEM_BUNDLE.exists():
                    ca_list.append(SYSTEM_BUNDLE)
                hs.write_config(tls, ca_list, direct=False, peers=list(names),
                                proxy_port=edge.proxy_port)

        if self.edges_mode:
            self.start_edges()
        log("starting both Synapses")
        for hs in self.hs:
            hs.start()
        for hs in self.hs:
            hs.wait_ready()
        log(f"Synapses up: {hs_a.server_name} (client :{hs_a.client_port}, federation "
            f":{hs_a.fed_port}), {hs_b.server_name} (client :{hs_b.client_port}, "
            f"federation :{hs_b.fed_port})")
        if self.edges_mode:
            self.initial_routes()

    def setup_overlay(self, tls: dict) -> None:
        if self.mode == "edges-stock-router":
            ra = Router("a", self.root, self.ports)
            rb = Router("b", self.root, self.ports, stock=True)
            ra.peers = [f"tcp://127.0.0.1:{rb.tcp}"]
            self.routers = [ra, rb]
            self.path = [ra, rb]
        elif self.mode == "edges-stock-middle":
            ra = Router("a", self.root, self.ports)
            rb = Router("b", self.root, self.ports)
            rm = Router("m", self.root, self.ports, stock=True)
            ra.peers = [f"tcp://127.0.0.1:{rm.tcp}"]
            rb.peers = [f"tcp://127.0.0.1:{rm.tcp}"]
            self.routers = [rm, ra, rb]
            self.path = [ra, rb]
        else:
            ra = Router("a", self.root, self.ports)
            rb = Router("b", self.root, self.ports)
            ra.peers = [f"tcp://127.0.0.1:{rb.tcp}"]
            rb.peers = [f"tcp://127.0.0.1:{ra.tcp}"]
            self.routers = [ra, rb]
            self.path = [ra, rb]
        for r in self.routers:
            r.start()
        for r in self.routers:
            r.wait_ready()
        log("routers up: "
            + ", ".join(f"{r.name} {r.subnet} tcp :{r.tcp}" for r in self.routers))
        for hs, router in zip(self.hs, self.path):
            edge = Edge(hs.label, self.root, self.ports, hs, router, tls)
            edge.ca = edge.init()
            self.edges.append(edge)

    def start_edges(self) -> None:
        for e in self.edges:
            e.start()
        for e in self.edges:
            e.wait_ready()
        ea, eb = self.edges
        ra, rb = self.path
        ea.add_route(self.hs[1].server_name, rb.pubkey)
        eb.add_route(self.hs[0].server_name, ra.pubkey)
        log(f"edges up (proxy :{ea.proxy_port}/:{eb.proxy_port}); routes added "
            f"{self.hs[1].server_name} -> {rb.pubkey[:12]}…, "
            f"{self.hs[0].server_name} -> {ra.pubkey[:12]}…")

    def initial_routes(self) -> None:
        """Waits until routers A and B select each other's subnet.

        Through a stock middle node that is not guaranteed: stock mycelium 0.7.10 does not
        send a peer that has just connected the routes it already holds, only later changes, so
        whichever of A and B reached the middle node second may not learn the other's subnet
        until a route request asks for it. There the wait is shorter and, failing it, the run
        goes on once both routers hold the middle node's route: the first relayed request then
        has to find its route on demand, which is part of what this mode tests.
        """
        wait = STOCK_ROUTE_WAIT if self.mode == "edges-stock-middle" else ROUTE_TIMEOUT
        took, lacking = self.poll_routes(wait)
        if took is not None:
            log(f"routers A and B select each other's subnets ({took:.1f} s)")
            return
        if self.mode != "edges-stock-middle":
            raise Failure(f"routes: after {wait:.0f} s {lacking}")
        middle = self.routers[0]
        wait_until("routers A and B to select the middle node's subnet",
                   lambda: all(middle.subnet in r.selected_subnets() for r in self.path),
                   ROUTE_TIMEOUT, alive=self.alive)
        note = (f"after {STOCK_ROUTE_WAIT:.0f} s {lacking} (the stock middle node does not "
                f"pass on routes it held before that router joined); going on: the first "
                f"relayed request must find the route on demand")
        self.results.append(f"routes: {note}")
        log(note)

    def alive(self) -> None:
        for r in self.routers:
            r.proc.check_alive()
        for e in self.edges:
            e.proc.check_alive()
        for hs in self.hs:
            hs.proc.check_alive()

    def route_gaps(self) -> list[str]:
        ra, rb = self.path
        return [f"{x.name} has no selected route to {y.subnet}"
                for x, y in ((ra, rb), (rb, ra)) if y.subnet not in x.selected_subnets()]

    def poll_routes(self, timeout: float) -> tuple[float | None, str]:
        """Seconds until routers A and B select each other's subnet, or None and what lacks."""
        t = time.monotonic()
        while True:
            self.alive()
            gaps = self.route_gaps()
            if not gaps:
                return time.monotonic() - t, ""
            if time.monotonic() - t > timeout:
                return None, "; ".join(gaps)
            time.sleep(0.25)

    # ---- the scenario

    def scenario(self) -> None:
        hs_a, hs_b = self.hs
        alice = hs_a.register("alice")
        bob = hs_b.register("bob")
        log(f"registered {alice['user_id']} and {bob['user_id']}")
        room = expect("alice creates a room", client("POST", alice, "/createRoom", {
            "preset": "private_chat", "name": "hyphae e2e"}))["room_id"]
        t = time.monotonic()
        expect("alice invites bob (over federation)",
               client("POST", alice, f"/rooms/{q(room)}/invite", {"user_id": bob["user_id"]}))
        log(f"room {room}: bob invited over federation in {time.monotonic() - t:.1f} s")
        t = time.monotonic()
        expect("bob joins (over federation)",
               client("POST", bob, f"/join/{q(room)}?server_name={q(hs_a.server_name)}", {}))

        def joined():
            status, body = client("GET", alice, f"/rooms/{q(room)}/joined_members", timeout=10)
            return status == 200 and bob["user_id"] in body.get("joined", {})
        wait_until("hs-a to see bob's join", joined, 60, 0.5, alive=self.alive)
        log(f"bob joined over federation in {time.monotonic() - t:.1f} s")

        sides = [Side("A", alice), Side("B", bob)]
        n = MESSAGES_PER_SIDE

        log(f"phase 1: {n} messages from each side, {PARALLEL_SENDS} in parallel per side")
        Burst(sides, room, "p1", n, self.tag).join()
        done = time.monotonic()
        res = verify(sides, room, "p1", self.tag, done)
        self.results.append(f"phase 1 ({n} per side): {res}")
        log(self.results[-1])

        if not self.edges_mode:
            return
        # Phase 2: restart router A, then edge A, while both sides keep sending.
        at_router, at_edge = int(n * 0.3), int(n * 0.65)
        gates = Gates([at_router, at_edge], senders=2)
        log(f"phase 2: {n} more from each side; router A restarts after #{at_router}, "
            f"edge A after #{at_edge}")
        b = Burst(sides, room, "p2", n, self.tag, pace=0.15, gates=gates)
        try:
            gates.wait_all(at_router)
            self.restart(self.path[0], gates, at_router)
            gates.wait_all(at_edge)
            self.restart(self.edges[0], gates, at_edge)
        except BaseException as e:
            gates.aborted.set()  # the senders stop at their next gate or group
            own = b.own_errors(timeout=60) if isinstance(e, Failure) else []
            if own:
                raise own[0] from None  # a sender's own error explains more
            raise
        b.join()
        done = time.monotonic()
        res = verify(sides, room, "p2", self.tag, done)
        self.results.append(f"phase 2 ({n} per side, with restarts): {res}")
        log(self.results[-1])

    def restart(self, comp, gates: Gates, at: int) -> None:
        log(f"restart {comp.name}: SIGTERM, {DOWNTIME:.0f} s down while sending goes on")
        t = time.monotonic()
        comp.proc.stop(timeout=20)
        stopped = time.monotonic() - t
        gates.open(at)
        time.sleep(DOWNTIME)
        comp.start()
        comp.wait_ready()
        up = time.monotonic() - t
        extra = ""
        if isinstance(comp, Router):
            # Informational only: a node that rejoins is not always sent the routes its peers
            # already hold (stock mycelium sends them on change or on request), and routers
            # find a missing route on demand with a route request when traffic needs it.
            took, lacking = self.poll_routes(ROUTE_RECHECK)
            if took is not None:
                extra = f", both routes selected again {took:.1f} s after that"
            else:
                extra = (f", routes not all selected {ROUTE_RECHECK:.0f} s after that "
                         f"({lacking}; left to route requests)")
        msg = (f"{comp.name} restarted at message #{at} (stopped in {stopped:.1f} s, "
               f"serving again {up:.1f} s after SIGTERM{extra})")
        self.restarts.append(msg)
        log(msg)

    def check_401(self) -> None:
        self.checked_401 = True
        hits = find_401s(self.hs)
        if hits:
            shown = "\n  ".join(hits[:20])
            raise Failure(f"{len(hits)} federation 401 line(s) in the Synapse logs:\n  {shown}")
        self.results.append("no federation 401 in either Synapse log")

    def check_wellknown(self) -> None:
        """noport names: each Synapse must have found its peer through the edge's well-known."""
        if self.args.names != "noport":
            return
        seen = []
        for hs in self.hs:
            text = hs.logfile.read_text(errors="replace")
            answers = re.findall(r"Response from \.well-known: (.*)", text)
            if not answers:
                errors = re.findall(r"Error fetching (https://\S+/\.well-known\S*: .*)", text)
                raise Failure(f"hs-{hs.label} never got an answer to its .well-known request "
                              f"(first error: {errors[0] if errors else 'none logged'})")
            seen.append(f"hs-{hs.label} got {answers[0].strip()}")
        self.results.append("well-known answered by the edges: " + "; ".join(seen))

    def dump_logs(self) -> None:
        print("\ne2e: logs kept under " + str(self.root), file=sys.stderr)
        files = [hs.logfile for hs in getattr(self, "hs", [])]
        files += [hs.dir / "stdout.log" for hs in getattr(self, "hs", [])]
        files += [r.dir / "router.log" for r in self.routers]
        files += [e.dir / "edge.log" for e in self.edges]
        for f in files:
            if f.exists():
                print(f"--- {f} (last lines){tail(f, 8)}", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--mode", choices=MODES, default="direct")
    ap.add_argument("--names", choices=("port", "noport"), default="port",
                    help="server names with an explicit port (hs-a.test:8448) or without "
                         "(hs-a.test: the edges answer /.well-known/matrix/server); edge modes")
    ap.add_argument("--workdir", default=str(REPO / "target/e2e"),
                    help="holds the Synapse venv and one run directory per mode and names "
                         "(default: target/e2e)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the run directory (configs, logs, databases) after a pass; it "
                         "is always kept after a failure")
    args = ap.parse_args()
    if args.mode == "direct" and args.names == "noport":
        ap.error("--names noport needs an edge mode (direct mode uses localhost:8481/8482)")
    name = f"e2e {args.mode}/{args.names}"
    if args.mode.startswith("edges-stock") and not (stock_bin().is_file()
                                                    and os.access(stock_bin(), os.X_OK)):
        why = f"{name}: no stock mycelium binary ({stock_bin()}; set HYPHAE_STOCK_MYCELIUM)"
        if os.environ.get("HYPHAE_REQUIRE_CAPABILITIES", "0") not in ("", "0"):
            print(f"{why} (HYPHAE_REQUIRE_CAPABILITIES is set: a missing capability fails)",
                  file=sys.stderr)
            return 2
        print(f"SKIPPED: {why}")
        return 0

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    r = Run(args)
    ok = False
    try:
        r.setup()
        r.scenario()
        Proc.stop_all()  # Synapse has flushed its log once it has exited
        r.check_401()
        r.check_wellknown()
        ok = True
    except SetupError as e:
        print(f"\ne2e: SETUP ERROR: {e}", file=sys.stderr)
        Proc.stop_all()
        return 2
    except Failure as e:
        print(f"\ne2e: FAIL: {e}", file=sys.stderr)
    except KeyboardInterrupt as e:
        print(f"\ne2e: interrupted ({e or 'Ctrl-C'})", file=sys.stderr)
    finally:
        Proc.stop_all()
    if not ok:
        # Check the logs after stopping: Synapse flushes its log on exit.
        try:
            hits = find_401s(r.hs) if hasattr(r, "hs") and not r.checked_401 else []
            if hits:
                print(f"e2e: also {len(hits)} federation 401 line(s), first: {hits[0]}",
                      file=sys.stderr)
        except Failure:
            pass
        r.dump_logs()
        print(f"\n{name}: FAIL after {time.monotonic() - T0:.0f} s")
        return 1
    print(f"\n{name}: PASS in {time.monotonic() - T0:.0f} s")
    for line in r.results:
        print(f"  {line}")
    for line in r.restarts:
        print(f"  restart: {line}")
    if not r.restarts:
        print("  restarts: none (direct mode)" if not r.edges_mode else "  restarts: none")
    if not args.keep:
        shutil.rmtree(r.root, ignore_errors=True)
    else:
        print(f"  kept: {r.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
