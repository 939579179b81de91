"""Privilege separation (issue 14, item 2). Started as root, each role runs
as a system user of its own (cloister-<role>) in its own subtree of the data
dir, with no_new_privs, a seccomp filter, no capabilities (the runner keeps
CAP_SETUID, CAP_SETGID and CAP_CHOWN for its sandboxes) and, but the runner,
not dumpable. A process with the proxy's uid (setpriv) reads no key file but
the proxy's own, gets nothing from kms.sock or audit.sock, and cannot read
the kms role's memory. Started as an ordinary user, the roles confine
themselves with Landlock and say so."""
import json
import os
import pwd
import shutil
import subprocess
import sys

import pytest

from conftest import CLOISTERD, Server
from test_audit import wait_for
from test_kms import b64, key, kms
from test_peers import REQUESTS, peer_exchange, refusals

ROLES = ("api", "proxy", "kms", "audit", "runner")
# CAP_CHOWN (0), CAP_SETGID (6), CAP_SETUID (7): docs/security.md, "Privileges"
RUNNER_CAPS = (1 << 0) | (1 << 6) | (1 << 7)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a root start: roles switch to users of their own")


def status(pid):
    out = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def role_ids(server, role):
    st = status(server.role_pid(role))
    return int(st["Uid"].split()[0]), int(st["Gid"].split()[0])


def as_uid(uid, gid):
    return ("setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups")


def can_read(prefix, path):
    """Whether a process under PREFIX can read one byte of PATH."""
    p = subprocess.run([*prefix, sys.executable, "-c",
                        "import sys; open(sys.argv[1], 'rb').read(1)", str(path)], capture_output=True, text=True)
    return p.returncode == 0


def test_five_roles_under_users_of_their_own(shared_server):
    s = shared_server
    ps = subprocess.run(["ps", "-o", "comm=", "--ppid", str(s.proc.pid)], capture_output=True, text=True).stdout
    assert sorted(ps.split()) == sorted(ROLES), ps
    titles = subprocess.run(["ps", "-o", "args=", "--ppid", str(s.proc.pid)], capture_output=True, text=True).stdout
    assert sorted(t.strip() for t in titles.splitlines()) == sorted(f"cloisterd: {r}" for r in ROLES), titles
    uids = {}
    for role in ROLES:
        st = status(s.role_pid(role))
        real, eff, saved, fs = (int(x) for x in st["Uid"].split())
        assert real == eff == saved == fs != 0, (role, st["Uid"])
        assert pwd.getpwuid(real).pw_name == f"cloister-{role}"
        assert st["Groups"] == "", (role, st["Groups"])
        assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2", (role, st)
        caps = int(st["CapEff"], 16)
        assert caps == (RUNNER_CAPS if role == "runner" else 0), (role, st["CapEff"])
        assert int(st["CapPrm"], 16) == caps and int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0
        assert int(st["CapBnd"], 16) == caps, (role, st["CapBnd"])  # nothing to get back, even by exec
        uids[role] = real
    assert len(set(uids.values())) == len(ROLES), uids
    # no core dumps
    for role in ROLES:
        limits = open(f"/proc/{s.role_pid(role)}/limits").read()
        core = next(l for l in limits.splitlines() if l.startswith("Max core file size")).split()
        assert core[4:6] == ["0", "0"], (role, core)


@pytest.fixture(scope="module")
def keyed(shared_server):
    """The shared server once its KMS has a key ring (the first Key used)."""
    key(shared_server, "privsep-probe")
    assert kms(shared_server, "encrypt", key="privsep-probe", plaintext=b64(b"x")).status_code == 200
    wait_for(lambda: (shared_server.data_dir / "kms" / "keyring.json").exists())
    return shared_server


def key_files(d):
    """Every private key and secret of the data dir, by whose it is."""
    return {
        "kms": [d / "kms" / "root.json", d / "kms" / "dev-unseal.key", d / "kms" / "keyring.json"],
        "audit": [d / "audit" / "audit.key", d / "audit" / "audit.db"],
        "supervisor": [d / "ca.key", d / "platform-ca.key", d / "admin.token"],
        "runner": [d / "runner" / "platform.key", d / "runner" / "runner.token"],
        "api": [d / "auth" / "handoff.key", d / "api" / "api.key",
                d / "api" / "store.db"],
        "proxy": [d / "proxy" / "proxy.key", d / "proxy" / "proxy-ca.key", d / "proxy" / "proxy.token",
                  d / "proxy" / "assertion-keys.json"],
    }


def test_the_proxys_uid_reads_only_the_proxys_keys(keyed):
    s = keyed
    proxy = as_uid(*role_ids(s, "proxy"))
    for owner, files in key_files(s.data_dir).items():
        for f in files:
            assert f.exists(), f
            assert can_read(proxy, f) == (owner == "proxy"), (owner, f)
    # what is public stays readable
    for f in ("ca.pem", "platform-ca.pem", "tls/proxy.pem", "tls/api.pem", "runner/platform.pem"):
        assert can_read(proxy, s.data_dir / f), f


def test_no_role_reads_the_ca_keys_or_anothers_keys(keyed):
    s = keyed
    files = key_files(s.data_dir)
    for role in ROLES:
        who = as_uid(*role_ids(s, role))
        for owner, paths in files.items():
            for f in paths:
                assert can_read(who, f) == (owner == role), (role, f)
        # nor does any role hold a CA key open
        pid = s.role_pid(role)
        held = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")
                if os.path.exists(f"/proc/{pid}/fd/{fd}")]
        assert not [h for h in held if h.endswith(("ca.key", "platform-ca.key"))], (role, held)


@pytest.mark.parametrize("name", ("kms.sock", "audit.sock"))
def test_the_proxys_uid_gets_nothing_from_kms_or_audit(shared_server, name):
    s = shared_server
    uid, gid = role_ids(s, "proxy")
    since = len(s.read_log())
    got = peer_exchange(s.data_dir / "run" / name, REQUESTS[name], as_uid(uid, gid))
    assert got == {"connect": None, "answer": ""}, got
    seen = wait_for(lambda: [r for r in refusals(s, since) if r["uid"] == str(uid) and r["socket"] == name])
    assert seen[0]["reason"] == "not a process of this daemon's roles", seen


def test_the_kms_memory_is_closed(shared_server):
    """/proc/<kms>/mem: not to the proxy's uid, nor even to another process
    of the kms role's own uid (the kms role is not dumpable)."""
    s = shared_server
    pid = s.role_pid("kms")
    probe = ("import sys\ntry:\n    open(f'/proc/{sys.argv[1]}/mem', 'rb')\nexcept PermissionError:\n"
             "    sys.exit(3)\n")
    for role in ("proxy", "kms"):
        p = subprocess.run([*as_uid(*role_ids(s, role)), sys.executable, "-c", probe, str(pid)],
                           capture_output=True, text=True)
        assert p.returncode == 3, (role, p.returncode, p.stderr)
    assert status(pid)["Uid"].split()[0] != "0"


def test_an_earlier_data_dir_is_moved_into_the_roles_subtrees(tmp_path):
    """A data dir of the layout before privilege separation: files at the
    top move into their role's subtree, owned by the role's user."""
    s = Server(tmp_path / "data").start()
    token = s.token
    s.stop()
    d = s.data_dir
    # back to the old layout
    for new, old in (("api/store.db", "store.db"), ("audit/audit.db", "audit.db"), ("audit/audit.key", "audit.key"),
                     ("proxy/proxy.token", "proxy.token"), ("proxy/proxy.key", "tls/proxy.key")):
        for suffix in ("", "-wal", "-shm"):
            if (d / (new + suffix)).exists():
                os.rename(d / (new + suffix), d / (old + suffix))
    s.start()
    try:
        assert s.token == token
        assert s.request("GET", "/v1/users/admin").status_code == 200
        assert not (d / "store.db").exists() and not (d / "audit.key").exists()
        for path, role in (("api/store.db", "api"), ("audit/audit.key", "audit"), ("proxy/proxy.token", "proxy"),
                           ("proxy/proxy.key", "proxy")):
            st = os.stat(d / path)
            assert pwd.getpwuid(st.st_uid).pw_name == f"cloister-{role}" and st.st_mode & 0o077 == 0, path
    finally:
        s.stop()


def test_an_ordinary_users_start_confines_each_role_with_landlock(tmp_path):
    """As nobody, with a data dir of its own: every role but the runner logs
    that Landlock confines it to its subtree (the runner mounts its
    sandboxes' file systems, which Landlock forbids, and says so), and all
    have no_new_privs, seccomp and no capabilities. The ruleset at work
    inside a role cannot be seen from outside (Landlock has no /proc field
    and its domain cannot be entered): each confined role tries, at its
    start, the CA key and another role's key and logs the refusal (a file
    that opened would stop it). Another role's key exists only once that
    role ran, so a second start shows both. test-privsep shows the same
    function refusing another room's key to a confined process."""
    base = tmp_path / "nobody"
    base.mkdir()
    os.chown(base, 65534, 65534)
    # installed where an ordinary user can run it (the build dir may be under /root)
    binary = base / "cloisterd"
    shutil.copy(CLOISTERD, binary)
    os.chmod(binary, 0o755)
    s = Server(base / "data", prefix=as_uid(65534, 65534), binary=binary)
    s.start()
    try:
        log = s.read_log()
        lines = [json.loads(l[l.index("{"):]) for l in log.splitlines() if "Landlock" in l]
        applied = {l["role"] for l in lines if l["msg"].startswith("Landlock applied")}
        unavailable = [l for l in lines if "unavailable" in l["msg"]]
        if unavailable:
            pytest.skip("this kernel offers no Landlock")
        assert applied == {"api", "proxy", "kms", "audit"}, lines
        assert any(l["role"] == "runner" and l["msg"].startswith("Landlock not applied") for l in lines), lines
        for role in ROLES:
            st = status(s.role_pid(role))
            assert st["Uid"].split()[0] == "65534"
            assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2" and int(st["CapEff"], 16) == 0, (role, st)
        # the run dir stays closed to other users, whose sockets are open to the daemon's uid alone
        assert os.stat(s.data_dir / "run").st_mode & 0o777 == 0o700
        s.stop()
        s.start()
        d = s.data_dir.resolve()
        checks = {(l["role"], l["msg"]) for l in (json.loads(l[l.index("{"):]) for l in s.read_log().splitlines()
                                                   if "landlock self-check" in l)}
        others = {"proxy": "kms/root.json", "audit": "kms/root.json", "api": "audit/audit.key",
                  "kms": "audit/audit.key"}
        for role, other in others.items():
            for path in (d / "ca.key", d / other):
                assert (role, f"landlock self-check: {path} refused (EACCES)") in checks, (role, path, checks)
    finally:
        s.stop()
