"""Shared fixtures: start the real cloisterd on loopback ports in a temporary
data dir, talk to it over HTTPS with the cluster CA, and check at the end that
it stopped cleanly (exit 0 on SIGTERM, no sanitizer report)."""
import base64
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
BUILD = Path(os.environ.get("CLOISTER_BUILD", ROOT / "build-test"))
CLOISTERD = BUILD / "src" / "daemon" / "cloisterd"
CLOISTER = BUILD / "src" / "cli" / "cloister"
SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")
# a role that dies by a signal (an assertion's abort) while stopping is not a clean stop
UNCLEAN_STOP_MARKERS = ("Assertion `", '"msg":"role stopped","role":"api","how":"killed by',
                        '"how":"killed by Aborted"', '"how":"killed by Segmentation fault"')


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=20, what="the condition"):
    """Polls PREDICATE every 50 ms until it returns something truthy, and
    returns that; fails naming WHAT after TIMEOUT seconds. For state that
    changes with no event a test can wait on (a file the daemon removes, an
    entry its audit role appends, a configuration it applies)."""
    deadline = time.time() + timeout
    while not (got := predicate()):
        assert time.time() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)
    return got


def sanitizer_env():
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    return env


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """As root, temporary dirs live under a base of this session's own: a
    concurrent pytest closes /tmp/pytest-of-root (0700) at its start, which
    would lock the roles' users out of a running daemon's data dir."""
    if os.geteuid() == 0 and not config.option.basetemp:
        config.option.basetemp = f"/tmp/cloister-tests-{os.getpid()}"
        config._cloister_basetemp = config.option.basetemp
        prune_old_basetemps(keep=2)


def prune_old_basetemps(keep):
    """Remove the temporary roots of earlier sessions whose pytest is gone
    (a run that failed keeps its root for inspection), newest KEEP kept:
    each holds data dirs of real daemons, up to 2 GB per full run."""
    roots = []
    for p in Path("/tmp").glob("cloister-tests-*"):
        pid = p.name.rsplit("-", 1)[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            roots.append(p)
    roots.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for p in roots[keep:]:
        shutil.rmtree(p, ignore_errors=True)


def pytest_sessionfinish(session, exitstatus):
    """A session that passed leaves no temporary root behind; one that failed
    keeps it (its daemons' logs and data dirs) and says where."""
    root = getattr(session.config, "_cloister_basetemp", None)
    if root is None:
        return
    if exitstatus == 0:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"\nkept the daemons' data dirs and logs for inspection in {root}")


def open_for_roles(path):
    """Started as root, each role runs as a user of its own and must reach
    its subtree of the data dir (and the runner, a test's enclave bundles):
    pytest makes its temporary dirs 0700, so give the ancestors of PATH
    under the temporary root the search bit for others (never read)."""
    if os.geteuid() != 0:
        return
    path = Path(path).resolve() if Path(path).exists() else Path(path).parent.resolve()
    tmp = Path("/tmp").resolve()
    for p in [path, *path.parents]:
        if p == tmp or tmp not in p.parents:
            break
        os.chmod(p, os.stat(p).st_mode | 0o001)


def role_user(role):
    """(uid, gid) of role ROLE's system user (cloister-ROLE), which
    cloisterd creates on its first start as root; created here alike when a
    test needs it before (useradd --system, no home, no login shell)."""
    import pwd
    name = f"cloister-{role}"
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
        pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid


@pytest.fixture(autouse=True)
def _tmp_path_open_for_roles(request):
    """Every test's tmp_path is reachable by the roles' users (bundles, data dirs)."""
    if "tmp_path" in request.fixturenames:
        open_for_roles(request.getfixturevalue("tmp_path"))
    yield


class Server:
    """One cloisterd --dev (or --config FILE) process and what a client needs to reach it."""

    def __init__(self, data_dir, extra_args=(), prefix=(), binary=CLOISTERD, env_extra=None, config=None):
        self.config = config  # a --config FILE in place of --dev (its data dir, API and proxy listeners overridden)
        self.data_dir = Path(data_dir)
        self.env_extra = dict(env_extra or {})  # e.g. OTEL_* variables (tests/otlp_receiver.py)
        open_for_roles(self.data_dir)
        self.prefix = list(prefix)  # a command that execs cloisterd (e.g. prlimit --nofile=N:N --)
        self.binary = Path(binary)
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.log_path = self.data_dir.parent / f"cloisterd-{self.port}.log"
        self.extra_args = list(extra_args)
        # every daemon runs a proxy role: give it its own port unless the test chose one
        if "--proxy-listen" not in self.extra_args:
            self.extra_args += ["--proxy-listen", f"127.0.0.1:{free_port()}"]
        self.proc = None
        self.logs_seen = ""

    @property
    def ca(self):
        return str(self.data_dir / "ca.pem")

    @property
    def token(self):
        return (self.data_dir / "admin.token").read_text().strip()

    def start(self, wait=True):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*self.prefix, str(self.binary), *(["--config", str(self.config)] if self.config else ["--dev"]),
             "--data-dir", str(self.data_dir),
             "--api-listen", f"127.0.0.1:{self.port}", *self.extra_args],
            stdout=self.log, stderr=self.log, env={**sanitizer_env(), **self.env_extra}, start_new_session=True)
        if wait:
            try:
                self.wait_healthy()
            except BaseException:
                self.kill9()  # a fixture that fails here never reaches its teardown
                raise
        return self

    def wait_healthy(self, timeout=30):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"cloisterd exited with {self.proc.returncode}:\n{self.read_log()}")
            try:
                r = requests.get(self.url + "/readyz", verify=self.ca, timeout=2)
                # a KMS sealed on purpose (--seal passphrase) waits for `cloisterd unseal`: up otherwise
                if r.status_code == 200 or (r.status_code == 503 and r.json()["roles"].get("kms") == "sealed"
                                            and len(r.json()["problems"]) == 1):
                    return
                last = r.status_code
            except (requests.ConnectionError, OSError) as e:
                last = e
            time.sleep(0.1)
        raise AssertionError(f"cloisterd not healthy after {timeout}s ({last}):\n{self.read_log()}")

    def read_log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def role_pid(self, role="api"):
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        for pid in out:
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == role:
                    return int(pid)
            except (FileNotFoundError, ProcessLookupError):  # gone between pgrep and the read (a role restarting)
                pass
        raise AssertionError(f"no {role} role process under {self.proc.pid}")

    def stop(self, expect_clean=True):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise AssertionError("cloisterd did not stop within 30s of SIGTERM")
        rc = self.proc.returncode
        self.log.close()
        self.proc = None
        if expect_clean:
            log = self.read_log()
            for marker in SANITIZER_MARKERS + UNCLEAN_STOP_MARKERS:
                assert marker not in log, f"{marker!r} in cloisterd output:\n{log[-6000:]}"
            assert rc == 0, f"cloisterd exited {rc} after SIGTERM:\n{log[-3000:]}"
        return rc

    def kill9(self):
        """kill -9 the whole process group (supervisor and roles) at once."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()
        self.proc = None

    # HTTP helpers
    def request(self, method, path, token=None, **kw):
        headers = kw.pop("headers", {})
        tok = self.token if token is None else token
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        return requests.request(method, self.url + path, headers=headers, verify=self.ca, timeout=30, **kw)


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "data").start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("shared") / "data").start()
    yield s
    s.stop()


def run_documented(marker, cwd, ports=(), env_extra=None):
    """Runs the shell example of docs/deployment.md marked `<!-- test:
    MARKER -->` in CWD, as written but with each 127.0.0.1:PORT of PORTS
    (every one in the example when PORTS is None) on a free port, with the
    build's cloisterd and cloister first on PATH. Returns (exit status,
    stdout, stderr); the daemons it started are killed afterwards, were
    they left running by a failed step."""
    doc = (ROOT / "docs" / "deployment.md").read_text()
    script = doc.split(f"<!-- test: {marker} -->\n```sh\n", 1)[1].split("\n```", 1)[0]
    for port in sorted(set(re.findall(r"127\.0\.0\.1:(\d+)", script))) if ports is None else ports:
        script = script.replace(f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}")
    env = sanitizer_env()
    for name in ("CLOISTER_TOKEN", "CLOISTER_SERVER", "CLOISTER_CA"):
        env.pop(name, None)
    env["XDG_CONFIG_HOME"] = str(Path(cwd) / "config")
    env["PATH"] = f"{CLOISTERD.parent}:{CLOISTER.parent}:{env['PATH']}"
    env.update(env_extra or {})
    p = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(timeout=300)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return p.returncode, out, err


def signing_keys(server):
    """The api's token signing keys as it saves them ([{created, retired,
    jwk}], private JWKs included), opened from the store the way the api
    does (src/api/signing-keys.c): the SigningKeyring document of SQLite's
    api/store.db, each key AES-256-GCM sealed under HKDF-SHA256 of
    auth/handoff.key."""
    import sqlite3
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    seal = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"cloister token signing keys v1").derive(
        (server.data_dir / "auth" / "handoff.key").read_bytes())
    db = sqlite3.connect(f"file:{server.data_dir / 'api' / 'store.db'}?mode=ro", uri=True)
    try:
        doc = json.loads(db.execute("SELECT doc FROM resources WHERE kind = 'SigningKeyring'").fetchone()[0])
    finally:
        db.close()
    out = []
    for k in doc["spec"]["keys"]:
        blob = base64.urlsafe_b64decode(k["sealed"] + "=" * (-len(k["sealed"]) % 4))
        jwk = AESGCM(seal).decrypt(blob[:12], blob[12:], b"cloister token signing key|" + k["kid"].encode())
        out.append({"created": k["created"], "retired": k["retired"], "jwk": json.loads(jwk)})
    return out


# ---- PostgreSQL: one throwaway cluster per test session (scripts/pg-test.sh) ----

PG_TEST = ROOT / "scripts" / "pg-test.sh"


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL (Debian's postgresql) started once for the session by
    scripts/pg-test.sh: initdb as the postgres user into a temp dir, listening
    only on a Unix socket there. Yields the URL of its `cloister` database
    (postgresql:///cloister?host=DIR&user=cloister; the role may create
    databases); stopped and removed after the session. Skips when no
    PostgreSQL server is installed."""
    p = subprocess.run([str(PG_TEST), "start"], capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        pytest.skip(f"PostgreSQL cannot be started here (apt install postgresql): {p.stderr.strip()[-500:]}")
    url = p.stdout.strip()
    yield url
    subprocess.run([str(PG_TEST), "stop", url], check=True, timeout=120)


def psql(url, sql):
    """Runs SQL on the database at URL with psql: its output (-At: bare values)."""
    return subprocess.run(["psql", "-XAtq", url, "-c", sql], capture_output=True, text=True, check=True,
                          timeout=60).stdout.strip()


def pg_database_url(cluster_url, name):
    """The URL of database NAME on the cluster of CLUSTER_URL."""
    return re.sub(r"^postgresql:///[^?]*\?", f"postgresql:///{name}?", cluster_url)


def pg_new_database(cluster_url):
    """Creates a new empty database on the cluster: its URL."""
    name = "t_" + os.urandom(6).hex()
    psql(cluster_url, f"CREATE DATABASE {name}")
    return pg_database_url(cluster_url, name)


def pg_drop_database(cluster_url, url):
    """Drops the database of URL (made by pg_new_database), closing its sessions."""
    name = url.split("postgresql:///")[1].split("?")[0]
    deadline = time.time() + 10
    while True:
        try:
            return psql(cluster_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        except subprocess.CalledProcessError:
            # an autovacuum worker in it is not ours to end (role cloister): it leaves within moments
            if time.time() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def pg_database(postgres):
    """A fresh database of the session's cluster for one test: its URL (dropped after)."""
    url = pg_new_database(postgres)
    yield url
    pg_drop_database(postgres, url)


def pg_ctl(url, action):
    """pg_ctl ACTION (stop, start, restart) of the cluster that URL (any of
    its databases) is on, as the postgres user, waiting until done."""
    host = url.split("host=")[1].split("&")[0]
    bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
    cmd = [str(bindir / "pg_ctl"), "-D", f"{host}/data", "-m", "fast", "-w", "-l", f"{host}/server.log",
           "-o", f"-c listen_addresses='' -k {host} -c max_connections=200", action]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def manifest(kind, name, spec, **meta):
    return {"apiVersion": "cloister.dev/v1", "kind": kind, "metadata": {"name": name, **meta}, "spec": spec}


def audit_entries(server, action):
    """The audit log's entries of ACTION (the audit role takes them asynchronously)."""
    size = server.request("GET", "/v1/audit/checkpoint").json()["size"]
    out = []
    for start in range(0, size, 1000):
        r = server.request("GET", f"/v1/audit/entries?start={start}&end={min(size, start + 1000)}")
        out += [json.loads(x["entry"]) for x in r.json()["entries"]]
    return [x for x in out if x.get("action") == action]


def access_records(server):
    """Every access record the log's proxy.access entries commit, in log order, as (entry, record as a dict):
    each entry names its segment and the records it commits (first, count); the segment is read through
    GET /v1/audit/segments/{id} (base64 of lines "<chain value, 64 hex> <JSON array of details.fields>")."""
    segments, shown, out = {}, {}, []
    pruned = {sid for e in audit_entries(server, "audit.access.prune") if e.get("appender") == "audit"
              for sid in e["details"]["segments"]}  # removed past their retention, records gone
    for e in audit_entries(server, "proxy.access"):
        d = e["details"]
        if "segment" not in d:  # an entry of the earlier format, holding its records itself
            continue
        if d["segment"] in pruned:
            continue
        if d["segment"] not in segments:
            r = server.request("GET", f"/v1/audit/segments/{d['segment']}")
            assert r.status_code == 200, r.text
            lines = base64.b64decode(r.json()["data"]).decode().splitlines()
            segments[d["segment"]] = [json.loads(line[65:]) for line in lines]
        # a head recovered from an earlier run's spool names the whole segment: what an earlier head committed
        # is not listed twice (as `cloister audit show`)
        start, end = max(d["first"], shown.get(d["segment"], 0)), d["first"] + d["count"]
        shown[d["segment"]] = max(shown.get(d["segment"], 0), end)
        for values in segments[d["segment"]][start:end]:
            out.append((e, dict(zip(d["fields"], values))))
    return out


def audited(server, action, pred):
    """The audit entries of ACTION matching PRED, once there is one (the audit role takes them asynchronously)."""
    deadline = time.time() + 15
    while not (got := [e for e in audit_entries(server, action) if pred(e)]):
        assert time.time() < deadline, f"no {action} audit entry"
        time.sleep(0.2)
    return got


def run_cli(server, *args, input=None, env_extra=None, config_home=None):
    """Runs the cloister CLI against SERVER; returns CompletedProcess."""
    env = sanitizer_env()
    env["XDG_CONFIG_HOME"] = str(config_home or (server.data_dir.parent / "config"))
    env["CLOISTER_SERVER"] = server.url
    env["CLOISTER_CA"] = server.ca
    env.pop("CLOISTER_TOKEN", None)
    if env_extra:
        env.update(env_extra)
    return subprocess.run([str(CLOISTER), *args], input=input, capture_output=True, text=True, env=env, timeout=60)


def start_with_proxy(data_dir, domain="localhost"):
    """A started Server whose proxy role serves HTTPS and plain HTTP for
    DOMAIN; returns (server, plain HTTP port, HTTPS port)."""
    http_port, https_port = free_port(), free_port()
    s = Server(data_dir, extra_args=["--proxy-listen", f"127.0.0.1:{https_port}", "--proxy-http-listen",
                                     f"127.0.0.1:{http_port}", "--domain", domain]).start()
    return s, http_port, https_port


def raw_exchange(port, data, timeout=5, tls_ca=None):
    """Sends DATA on a fresh connection (TLS with HTTP/1.1 when TLS_CA is
    given) and returns everything read until the server closes or TIMEOUT
    passes without data. A server that answers and closes before all of
    DATA is sent still has its answer read."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if tls_ca:
        ctx = ssl.create_default_context(cafile=tls_ca)
        ctx.set_alpn_protocols(["http/1.1"])
        s = ctx.wrap_socket(s, server_hostname="127.0.0.1")
    try:
        s.sendall(data)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
        pass
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except (socket.timeout, ConnectionResetError, ssl.SSLError):
        pass
    s.close()
    return out


def statuses(raw):
    """The status codes of the HTTP/1.1 responses in RAW, in order."""
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]


def ok(p):
    """P (a CompletedProcess) when it exited 0; fails the test with its output otherwise."""
    assert p.returncode == 0, (p.stdout[-800:], p.stderr[-1500:])
    return p


def workspace_world(tmp_path_factory, name, users, workspaces, datasets, env=None):
    """A started server (ENV set while it starts) with USERS (each with a credential, logged in with the CLI
    in a config home of their own, keys made and registered except for those listed as users[u] is False),
    WORKSPACES {name: [members]} and DATASETS [(owner, dataset, workspace, csv text)] uploaded with the CLI.
    Returns {"s", "base", "tokens", "config"}; the caller stops w["s"]."""
    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        s = Server(tmp_path_factory.mktemp(name) / "data").start()
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.update({k: v})
    base = tmp_path_factory.mktemp(f"{name}-clients")
    docs = []
    for u in users:
        docs += [manifest("User", u, {"type": "human"}), manifest("Credential", f"{u}-cli", {"user": u, "type": "authToken"})]
    assert s.request("POST", "/v1/apply", json={"items": docs}).status_code == 200
    w = {"s": s, "base": base, "tokens": {}, "config": {}}
    for u, with_keys in users.items():
        w["tokens"][u] = s.request("POST", "/v1/tokens", json={"credential": f"{u}-cli"}).json()["token"]
        w["config"][u] = base / f"{u}-config"
        ok(world_cli(w, u, "login", "--token", w["tokens"][u]))
        if with_keys:
            ok(world_cli(w, u, "keys", "init"))
            ok(world_cli(w, u, "keys", "register"))
    for ws, members in workspaces.items():
        ok(run_cli(s, "workspace", "create", ws, *[a for m in members for a in ("--member", m)],
                   env_extra={"CLOISTER_TOKEN": s.token}, config_home=base / "admin-config"))
    for owner, ds, ws, text in datasets:
        f = base / f"{ds}.csv"
        f.write_text(text)
        ok(world_cli(w, owner, "dataset", "upload", ds, "--workspace", ws, "--file", str(f)))
    return w


def world_cli(w, user, *args):
    """The CLI as USER of workspace_world() W."""
    return run_cli(w["s"], *args, config_home=w["config"][user])
