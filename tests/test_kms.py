"""The KMS end to end: the kms role behind the API and the CLI, key rotation
and version states, sealing by passphrase and by a SoftHSM2 token through a
restart, and Secret values that never reach the disk, the log or the audit
log in the clear."""
import base64
import datetime
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import CLOISTERD, Server, manifest, role_user, run_cli

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"


def b64(data):
    return base64.b64encode(data).decode()


def key(s, name, purpose="encrypt", **spec):
    r = s.request("PUT" if s.request("GET", f"/v1/keys/{name}").status_code == 200 else "POST",
                  f"/v1/keys/{name}" if s.request("GET", f"/v1/keys/{name}").status_code == 200 else "/v1/keys",
                  json=manifest("Key", name, {"purpose": purpose, **spec}))
    assert r.status_code in (200, 201), r.text


def kms(s, op, **body):
    return s.request("POST", f"/v1/kms/{op}", json=body)


def unseal(data_dir, secret):
    return subprocess.run([str(CLOISTERD), "unseal", "--data-dir", str(data_dir), "--passphrase-fd", "0"],
                          input=secret + "\n", capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def logged_in(shared_server, tmp_path_factory):
    config = tmp_path_factory.mktemp("kms-cli")
    p = run_cli(shared_server, "login", "--token", shared_server.token, config_home=config)
    assert p.returncode == 0, p.stderr
    return config


def cli(s, config, *args, input=None):
    env = dict(os.environ, XDG_CONFIG_HOME=str(config), CLOISTER_SERVER=s.url, CLOISTER_CA=s.ca)
    env.pop("CLOISTER_TOKEN", None)
    return subprocess.run([str(Path(CLOISTERD).parent.parent / "cli" / "cloister"), *args], input=input,
                          capture_output=True, env=env, timeout=60)


def test_cli_round_trip_across_rotation(shared_server, logged_in):
    s = shared_server
    key(s, "cli-key")
    p = cli(s, logged_in, "kms", "encrypt", "--key", "cli-key", "--context", "app=wiki", input=b"first secret")
    assert p.returncode == 0, p.stderr
    old = p.stdout
    assert old.startswith(b"clk\x01") and b"first secret" not in old
    p = cli(s, logged_in, "kms", "rotate", "cli-key")
    assert p.returncode == 0 and b"version 2 is now primary" in p.stdout, p.stderr
    p = cli(s, logged_in, "kms", "encrypt", "--key", "cli-key", "--context", "app=wiki", input=b"second secret")
    new = p.stdout
    assert new[4 + 1 + len("cli-key"):][:4] == b"\x00\x00\x00\x02"  # the version in the header
    for ct, want in ((old, b"first secret"), (new, b"second secret")):
        p = cli(s, logged_in, "kms", "decrypt", "--context", "app=wiki", input=ct)
        assert p.returncode == 0 and p.stdout == want, p.stderr
    # a wrong context, no context, a flipped byte: each a clear refusal
    for args, ct in ((["--context", "app=mail"], old), ([], old),
                     (["--context", "app=wiki"], old[:-3] + bytes([old[-3] ^ 1]) + old[-2:])):
        p = cli(s, logged_in, "kms", "decrypt", *args, input=ct)
        assert p.returncode == 1 and b"does not authenticate" in p.stderr, (args, p.stderr)
    # the ciphertext's base64 text is accepted too
    p = cli(s, logged_in, "kms", "decrypt", "--context", "app=wiki", input=base64.b64encode(new) + b"\n")
    assert p.returncode == 0 and p.stdout == b"second secret", p.stderr
    p = cli(s, logged_in, "kms", "datakey", "--key", "cli-key")
    assert p.returncode == 0, p.stderr
    dk = json.loads(p.stdout)
    assert len(base64.b64decode(dk["plaintext"])) == 32
    p = cli(s, logged_in, "kms", "decrypt", input=dk["ciphertext"].encode())
    assert p.returncode == 0 and p.stdout == base64.b64decode(dk["plaintext"])
    # usage errors exit 2; unknown keys exit 1
    assert cli(s, logged_in, "kms", "encrypt", input=b"x").returncode == 2
    assert cli(s, logged_in, "kms", "frobnicate").returncode == 2
    p = cli(s, logged_in, "kms", "encrypt", "--key", "no-such-key", input=b"x")
    assert p.returncode == 1 and b"not found" in p.stderr
    # a version's destruction: a day ahead at least, then cancelled
    p = cli(s, logged_in, "kms", "version", "cli-key", "1", "destroyed", "--after", "60")
    assert p.returncode == 1 and b"86400" in p.stderr, p.stderr
    p = cli(s, logged_in, "kms", "version", "cli-key", "1", "destroyed", "--after", "86400")
    assert p.returncode == 0 and p.stdout.startswith(b"key/cli-key version 1: pendingDestruction, destroyed at ")
    p = cli(s, logged_in, "kms", "decrypt", "--context", "app=wiki", input=old)
    assert p.returncode == 1 and b"scheduled for destruction" in p.stderr, p.stderr
    p = cli(s, logged_in, "kms", "version", "cli-key", "1", "enabled")
    assert p.returncode == 0 and p.stdout == b"key/cli-key version 1: enabled\n", p.stdout
    assert cli(s, logged_in, "kms", "decrypt", "--context", "app=wiki", input=old).stdout == b"first secret"
    for args in (["cli-key", "1"], ["cli-key", "0", "enabled"], ["cli-key", "1", "gone"],
                 ["cli-key", "1", "enabled", "--after", "86400"], ["cli-key", "1", "destroyed", "--after", "x"]):
        assert cli(s, logged_in, "kms", "version", *args).returncode == 2, args


def test_versions_disable_destroy_and_rewrap(shared_server):
    s = shared_server
    key(s, "ring")
    ct1 = kms(s, "encrypt", key="ring", plaintext=b64(b"v1 data"), context={"t": "1"}).json()["ciphertext"]
    r = s.request("POST", "/v1/kms/keys/ring/rotate")
    assert r.status_code == 200 and r.json()["primaryVersion"] == 2
    # re-wrap moves a ciphertext to the newest version without showing the plaintext
    r = kms(s, "rewrap", ciphertext=ct1, context={"t": "1"})
    assert r.status_code == 200 and r.json()["version"] == 2 and "plaintext" not in r.json()
    ct2 = r.json()["ciphertext"]
    assert base64.b64decode(kms(s, "decrypt", ciphertext=ct2, context={"t": "1"}).json()["plaintext"]) == b"v1 data"
    # the primary version cannot be disabled; an older one can, and then refuses
    r = s.request("POST", "/v1/kms/keys/ring/versions/2", json={"state": "disabled"})
    assert r.status_code == 409 and "rotate" in r.json()["error"]["message"]
    r = s.request("POST", "/v1/kms/keys/ring/versions/1", json={"state": "disabled"})
    assert r.status_code == 200 and r.json()["versions"][0]["state"] == "disabled"
    r = kms(s, "decrypt", ciphertext=ct1, context={"t": "1"})
    assert r.status_code == 409 and "disabled" in r.json()["error"]["message"]
    s.request("POST", "/v1/kms/keys/ring/versions/1", json={"state": "enabled"})
    assert kms(s, "decrypt", ciphertext=ct1, context={"t": "1"}).status_code == 200
    # destruction waits at least a day (the material going at its time is a unit test of the
    # kms role's ring: src/kms/test-kms.c); until then the version refuses every use
    for after in (0, 3600, 86399):
        r = s.request("POST", "/v1/kms/keys/ring/versions/1", json={"state": "destroyed", "destroyAfterSeconds": after})
        assert r.status_code == 400 and "86400" in r.json()["error"]["message"], r.text
    r = s.request("POST", "/v1/kms/keys/ring/versions/1", json={"state": "destroyed"})
    v1 = r.json()["versions"][0]
    assert r.status_code == 200 and v1["state"] == "pendingDestruction", r.text
    at = datetime.datetime.fromisoformat(v1["destroyAt"].replace("Z", "+00:00"))
    week = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=7)
    assert abs((at - week).total_seconds()) < 120  # a week unless asked otherwise
    r = kms(s, "decrypt", ciphertext=ct1, context={"t": "1"})
    assert r.status_code == 409 and "scheduled for destruction" in r.json()["error"]["message"]
    # cancelled by setting the version's state again
    r = s.request("POST", "/v1/kms/keys/ring/versions/1", json={"state": "enabled"})
    assert r.status_code == 200 and r.json()["versions"][0]["state"] == "enabled", r.text
    assert "destroyAt" not in r.json()["versions"][0]
    assert kms(s, "decrypt", ciphertext=ct1, context={"t": "1"}).status_code == 200
    # version 2 is untouched
    assert kms(s, "decrypt", ciphertext=ct2, context={"t": "1"}).status_code == 200
    assert s.request("POST", "/v1/kms/keys/ring/versions/9", json={"state": "enabled"}).status_code == 404


def test_refusals(shared_server):
    s = shared_server
    key(s, "enc-only")
    key(s, "signer", "sign")
    assert kms(s, "encrypt", key="nope", plaintext="").status_code == 404
    r = kms(s, "encrypt", key="signer", plaintext=b64(b"x"))
    assert r.status_code == 400 and "sign key" in r.json()["error"]["message"]
    assert kms(s, "sign", key="enc-only", message=b64(b"x")).status_code == 400
    assert kms(s, "encrypt", key="enc-only", plaintext="not base64!").status_code == 400
    assert kms(s, "encrypt", key="enc-only", plaintext=b64(b"x" * (64 * 1024 + 1))).status_code == 413
    assert kms(s, "encrypt", key="enc-only", plaintext="", context={"k": 1}).status_code == 400
    assert kms(s, "encrypt", key="enc-only", plaintext="", context={f"k{i}": "v" for i in range(17)}).status_code == 400
    assert kms(s, "decrypt", ciphertext=b64(b"clk\x01garbage")).status_code == 400
    assert s.request("GET", "/v1/kms/encrypt").status_code == 405
    assert s.request("POST", "/v1/kms/nothing").status_code == 404
    r = s.request("POST", "/v1/kms/encrypt", token="clst_" + "A" * 43, json={"key": "enc-only", "plaintext": ""})
    assert r.status_code == 401
    # a Key whose algorithm does not fit its purpose is refused at use
    key(s, "odd", "encrypt", algorithm="ed25519")
    r = kms(s, "encrypt", key="odd", plaintext="")
    assert r.status_code == 400 and "cannot use algorithm" in r.json()["error"]["message"]


@pytest.mark.parametrize("algorithm", ["ecdsa-p256", "ed25519"])
def test_sign_and_verify(shared_server, algorithm):
    s = shared_server
    name = f"sig-{algorithm}"
    key(s, name, "sign", algorithm=algorithm)
    msg = b"attested message"
    r = kms(s, "sign", key=name, message=b64(msg))
    assert r.status_code == 200, r.text
    sig, version = base64.b64decode(r.json()["signature"]), r.json()["version"]
    ok = kms(s, "verify", key=name, version=version, message=b64(msg), signature=b64(sig)).json()
    bad = kms(s, "verify", key=name, version=version, message=b64(msg + b"!"), signature=b64(sig)).json()
    assert ok["valid"] is True and bad["valid"] is False
    # an independent implementation verifies it with the published public key
    info = s.request("GET", f"/v1/kms/keys/{name}").json()
    pub = serialization.load_der_public_key(base64.b64decode(info["versions"][0]["publicKey"]))
    if algorithm == "ecdsa-p256":
        pub.verify(sig, msg, ec.ECDSA(hashes.SHA256()))
    else:
        pub.verify(sig, msg)


def audit_entries(s):
    """Every entry of the audit log, decoded."""
    size = s.request("GET", "/v1/audit/checkpoint").json()["size"]
    out = []
    for start in range(0, size, 1000):
        r = s.request("GET", f"/v1/audit/entries?start={start}&end={min(size, start + 1000)}")
        out += [json.loads(e["entry"]) for e in r.json()["entries"]]
    return out


def grep_tree(root, needles):
    """Files under ROOT that contain any of NEEDLES (bytes)."""
    hits = []
    for path in Path(root).rglob("*"):
        if path.is_file() and not path.is_socket():
            data = path.read_bytes()
            hits += [(str(path), n) for n in needles if n in data]
    return hits


def test_secret_values_are_encrypted_at_rest(server):
    s = server
    value = "s3cret-at-rest-9c1e77"
    needles = [value.encode(), b64(value.encode()).encode(), value.encode("utf-16-le")]
    r = s.request("POST", "/v1/secrets", json=manifest("Secret", "db", {"data": {"password": value}}))
    assert r.status_code == 201, r.text
    assert value not in r.text
    # re-applying the same value changes nothing; another value is a new ciphertext
    r = s.request("POST", "/v1/apply", json={"items": [manifest("Secret", "db", {"data": {"password": value}})]})
    assert r.json()["items"][0]["action"] == "unchanged", r.text
    r = s.request("POST", "/v1/apply", json={"items": [manifest("Secret", "db", {"data": {"password": value,
                                                                                          "user": "app"}})]})
    assert r.json()["items"][0]["action"] == "configured"
    # while running (WAL files included) and after a stop, no file holds the value
    assert grep_tree(s.data_dir, needles) == []
    s.stop()
    assert grep_tree(s.data_dir, needles) == []
    assert value not in s.read_log()
    s.start()
    assert s.request("GET", "/v1/secrets/db").json()["status"]["keys"] == ["password", "user"]


def test_operations_are_audited_without_plaintext(server):
    s = server
    key(s, "audited")
    plain = b"plaintext-never-logged-5512"
    r = kms(s, "encrypt", key="audited", plaintext=b64(plain), context={"tenant": "t-9"})
    ct = r.json()["ciphertext"]
    r = kms(s, "decrypt", ciphertext=ct, context={"tenant": "t-9"})
    dk = kms(s, "datakey", key="audited").json()["plaintext"]
    kms(s, "decrypt", ciphertext=ct)  # a refusal is an event too
    # the dev-mode auto-unseal at start is queued by the kms until the audit
    # role serves, which may be after the test's first calls
    deadline = time.time() + 20
    while not any(e["action"] == "kms.unseal" for e in audit_entries(s)) and time.time() < deadline:
        time.sleep(0.1)
    entries = audit_entries(s)
    kms_events = [e for e in entries if e["action"].startswith("kms.")]
    seen = {(e["action"], e["outcome"]) for e in kms_events}
    assert {("kms.encrypt", "success"), ("kms.decrypt", "success"), ("kms.datakey", "success"),
            ("kms.decrypt", "failure")} <= seen, seen
    assert ("kms.unseal", "success") in seen  # the dev-mode auto-unseal at start
    assert all(e["resource"] == {"kind": "Key", "name": "audited"} for e in kms_events if e["action"] != "kms.unseal")
    text = json.dumps(entries)
    assert "t-9" not in text and "tenant" in text  # context names, never values
    s.stop()
    log = s.read_log()
    for t in (text, log):
        assert plain.decode() not in t and b64(plain) not in t and dk not in t
    assert grep_tree(s.data_dir, [plain, b64(plain).encode(), dk.encode()]) == []


def test_dev_mode_auto_unseal_file(server):
    f = server.data_dir / "kms" / "dev-unseal.key"
    assert f.stat().st_mode & 0o777 == 0o600
    assert "DEVELOPMENT MODE" in server.read_log()
    root = json.loads((server.data_dir / "kms" / "root.json").read_text())
    assert root["mode"] == "dev"


def sealed_round_trip(tmp_path, extra_args, secret, wrong, env=None):
    """Starts a sealed KMS, initialises it with SECRET, encrypts, restarts,
    checks that WRONG is refused without damage, unseals, decrypts."""
    s = Server(tmp_path / "data", extra_args)
    if env:
        os.environ.update(env)
    s.start()
    try:
        key(s, "sealed-key")
        r = kms(s, "encrypt", key="sealed-key", plaintext=b64(b"x"))
        assert r.status_code == 503 and r.json()["error"]["code"] == "sealed"
        r = s.request("POST", "/v1/secrets", json=manifest("Secret", "while-sealed", {"data": {"k": "v"}}))
        assert r.status_code == 503  # never stored in the clear
        p = unseal(s.data_dir, secret)
        assert p.returncode == 0, p.stderr
        ct = kms(s, "encrypt", key="sealed-key", plaintext=b64(b"survives restarts")).json()["ciphertext"]
        s.stop()
        s.start()
        assert kms(s, "decrypt", ciphertext=ct).json()["error"]["code"] == "sealed"
        before = (s.data_dir / "kms" / "root.json").read_bytes(), (s.data_dir / "kms" / "keyring.json").read_bytes()
        p = unseal(s.data_dir, wrong)
        assert p.returncode == 1 and "refused" in p.stderr, p.stderr
        after = (s.data_dir / "kms" / "root.json").read_bytes(), (s.data_dir / "kms" / "keyring.json").read_bytes()
        assert before == after
        assert kms(s, "decrypt", ciphertext=ct).status_code == 503
        p = unseal(s.data_dir, secret)
        assert p.returncode == 0, p.stderr
        r = kms(s, "decrypt", ciphertext=ct)
        assert base64.b64decode(r.json()["plaintext"]) == b"survives restarts"
        assert unseal(s.data_dir, secret).stdout.strip() == "the KMS is already unsealed"
        log = s.read_log()
        assert secret not in log and wrong not in log
    finally:
        s.stop()


def test_passphrase_sealing_round_trip(tmp_path):
    (tmp_path / "short").mkdir()
    s = Server(tmp_path / "short" / "data", ["--seal", "passphrase"]).start()
    try:
        p = unseal(s.data_dir, "short")
        assert p.returncode == 1 and "at least 8" in p.stderr
        assert not (s.data_dir / "kms" / "root.json").exists()
    finally:
        s.stop()
    sealed_round_trip(tmp_path, ["--seal", "passphrase"], "correct horse battery staple", "wrong horse battery")
    root = json.loads((tmp_path / "data" / "kms" / "root.json").read_text())
    assert root["mode"] == "passphrase" and root["kdf"]["algorithm"] == "argon2id"


@pytest.mark.skipif(not (shutil.which("softhsm2-util") and Path(SOFTHSM_MODULE).exists()), reason="needs softhsm2")
def test_pkcs11_sealing_round_trip(tmp_path, monkeypatch):
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    out = subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", "cloister", "--pin", "4711",
                          "--so-pin", "0815"], capture_output=True, text=True, check=True).stdout
    slot = out.rsplit("slot", 1)[1].strip()
    assert slot.isdigit(), out
    if os.geteuid() == 0:  # the token is the kms role's, as an HSM's would be
        uid, gid = role_user("kms")
        for p in [tokens, *tokens.rglob("*")]:
            os.chown(p, uid, gid)
    sealed_round_trip(tmp_path, ["--seal", "pkcs11", "--pkcs11-module", SOFTHSM_MODULE, "--pkcs11-slot", slot],
                      "4711", "9999")
    root = json.loads((tmp_path / "data" / "kms" / "root.json").read_text())
    assert root["mode"] == "pkcs11"
    # the wrapping key lives in the token: nothing in the data dir unseals the KMS by itself
    assert sorted(p.name for p in (tmp_path / "data" / "kms").iterdir()) == ["keyring.json", "root.json"]


def test_seal_flags_are_checked(tmp_path):
    base = [str(CLOISTERD), "--dev", "--data-dir", str(tmp_path / "d")]
    for args in (["--seal", "vault"], ["--seal", "pkcs11"], ["--seal", "pkcs11", "--pkcs11-module", "/x",
                                                              "--pkcs11-slot", "-1"]):
        p = subprocess.run(base + args, capture_output=True, text=True, timeout=30)
        assert p.returncode == 2, (args, p.stderr)
    p = subprocess.run([str(CLOISTERD), "unseal", "--data-dir", str(tmp_path)], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 1 and "cannot reach the KMS" in p.stderr


def test_docs_cli_examples_run(shared_server, logged_in, tmp_path):
    doc = (Path(__file__).resolve().parent.parent / "docs" / "kms.md").read_text()
    script = doc.split("<!-- test: kms-cli -->\n```sh\n", 1)[1].split("\n```", 1)[0]
    env = dict(os.environ, XDG_CONFIG_HOME=str(logged_in), CLOISTER_SERVER=shared_server.url,
               CLOISTER_CA=shared_server.ca,
               PATH=f"{Path(CLOISTERD).parent.parent / 'cli'}:{os.environ['PATH']}")
    env.pop("CLOISTER_TOKEN", None)
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("meet at noon") == 2 and "refused" in p.stdout and "version 2 is now primary" in p.stdout
    dk = json.loads((tmp_path / "datakey.json").read_text())
    assert len(base64.b64decode(dk["plaintext"])) == 32


def test_kms_role_keeps_keys_locked_and_out_of_dumps(shared_server):
    pid = shared_server.role_pid("kms")
    # the key arena: 256 KiB mapped with MADV_DONTDUMP ("dd"), locked with mlock
    blocks = Path(f"/proc/{pid}/smaps").read_text().split("VmFlags:")
    arena = [b for prev, b in zip(blocks, blocks[1:]) if "\nSize:                256 kB" in prev and " dd" in b.split("\n")[0]]
    assert arena, "no 256 KiB MADV_DONTDUMP arena in the kms role"
    asan = "libasan" in subprocess.run(["ldd", str(CLOISTERD)], capture_output=True, text=True).stdout
    if not asan:  # ASan intercepts mlock and ignores it
        status = Path(f"/proc/{pid}/status").read_text()
        assert int(status.split("VmLck:")[1].split()[0]) >= 256, status


def test_unseal_asks_on_the_terminal_without_echo(tmp_path):
    import fcntl
    import pty
    import termios
    import time
    s = Server(tmp_path / "data", ["--seal", "passphrase"]).start()
    try:
        master, slave = pty.openpty()

        def controlling_tty():
            os.setsid()
            fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

        p = subprocess.Popen([str(CLOISTERD), "unseal", "--data-dir", str(s.data_dir)], stdin=slave, stdout=slave,
                             stderr=slave, preexec_fn=controlling_tty)
        os.close(slave)
        seen = b""
        deadline = time.time() + 30
        while b"passphrase or PIN: " not in seen and time.time() < deadline:
            seen += os.read(master, 1024)
        os.write(master, b"terminal passphrase 42\n")
        assert p.wait(timeout=60) == 0
        try:
            while True:
                seen += os.read(master, 1024)
        except OSError:  # the other side closed
            pass
        os.close(master)
        assert b"the KMS is unsealed" in seen and b"terminal passphrase 42" not in seen, seen
        key(s, "tty-key")
        assert kms(s, "encrypt", key="tty-key", plaintext=b64(b"x")).status_code == 200
    finally:
        s.stop()
