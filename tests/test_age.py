"""age v1 interop with the reference tool (Debian package `age`) both ways,
tampered files refused with no output left behind, and the users' keys:
`cloister keys init|show|register` against a real server."""
import json
import os
import shutil
import stat
import subprocess

import pytest

from conftest import CLOISTER, audited, manifest, run_cli, sanitizer_env

AGE = shutil.which("age")
AGE_KEYGEN = shutil.which("age-keygen")
pytestmark = pytest.mark.skipif(not AGE or not AGE_KEYGEN, reason="the age tool is not installed (scripts/setup.sh)")

CHUNK = 65536


def cloister(*args, config, input=None):
    env = sanitizer_env()
    env["XDG_CONFIG_HOME"] = str(config)
    return subprocess.run([str(CLOISTER), *args], input=input, capture_output=True, env=env, timeout=120)


def ok(p):
    assert p.returncode == 0, (p.stdout[-500:], p.stderr.decode(errors="replace") if isinstance(p.stderr, bytes) else p.stderr)
    return p


@pytest.fixture
def keys(tmp_path):
    """A config dir with `cloister keys init` done; returns (config, identity file, recipient)."""
    config = tmp_path / "config"
    ok(cloister("keys", "init", config=config))
    ident = config / "cloister" / "keys" / "age-identity.txt"
    recipient = [ln.split(": ")[1] for ln in ident.read_text().splitlines() if ln.startswith("# public key: ")][0]
    return config, ident, recipient



def payload(tmp_path, size, name="plain"):
    p = tmp_path / name
    p.write_bytes(os.urandom(size))
    return p


def test_keys_init_makes_private_files_in_age_keygen_format(keys):
    config, ident, recipient = keys
    keydir = ident.parent
    assert stat.S_IMODE(keydir.stat().st_mode) == 0o700
    for f in ("age-identity.txt", "approval-key.pem"):
        assert stat.S_IMODE((keydir / f).stat().st_mode) == 0o600
    lines = ident.read_text().splitlines()
    assert lines[0].startswith("# created: 20") and lines[1] == f"# public key: {recipient}"
    assert lines[2].startswith("AGE-SECRET-KEY-1") and len(lines) == 3
    # age-keygen agrees on the recipient
    y = subprocess.run([AGE_KEYGEN, "-y", str(ident)], capture_output=True, text=True, check=True)
    assert y.stdout.strip() == recipient
    shown = json.loads(ok(cloister("keys", "show", "-o", "json", config=config)).stdout)
    assert shown["recipient"] == recipient and len(shown["approval"]) == 44
    # refuses to overwrite; --force replaces
    before = ident.read_text()
    p = cloister("keys", "init", config=config)
    assert p.returncode == 1 and b"--force" in p.stderr and ident.read_text() == before
    ok(cloister("keys", "init", "--force", config=config))
    assert ident.read_text() != before


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5])
def test_we_encrypt_age_decrypts(keys, tmp_path, size):
    config, ident, recipient = keys
    plain = payload(tmp_path, size)
    ok(cloister("age", "encrypt", "-r", recipient, "-o", str(tmp_path / "f.age"), str(plain), config=config))
    out = subprocess.run([AGE, "-d", "-i", str(ident), str(tmp_path / "f.age")], capture_output=True, check=True)
    assert out.stdout == plain.read_bytes()


@pytest.mark.parametrize("size", [0, 1, CHUNK, 2 * CHUNK + 7])
def test_age_encrypts_we_decrypt_with_an_age_keygen_identity(tmp_path, size):
    ident = tmp_path / "key.txt"
    subprocess.run([AGE_KEYGEN, "-o", str(ident)], check=True, capture_output=True)
    recipient = subprocess.run([AGE_KEYGEN, "-y", str(ident)], capture_output=True, text=True, check=True).stdout.strip()
    plain = payload(tmp_path, size)
    subprocess.run([AGE, "-r", recipient, "-o", str(tmp_path / "f.age"), str(plain)], check=True)
    ok(cloister("dataset", "decrypt", "-i", str(ident), "-o", str(tmp_path / "out"), str(tmp_path / "f.age"),
                config=tmp_path / "config"))
    assert (tmp_path / "out").read_bytes() == plain.read_bytes()
    # stdin to stdout as well
    p = ok(cloister("dataset", "decrypt", "-i", str(ident), config=tmp_path / "config",
                    input=(tmp_path / "f.age").read_bytes()))
    assert p.stdout == plain.read_bytes()


def test_age_encrypts_to_our_identity_and_to_several_recipients(keys, tmp_path):
    config, ident, recipient = keys
    other = tmp_path / "other.txt"
    subprocess.run([AGE_KEYGEN, "-o", str(other)], check=True, capture_output=True)
    other_r = subprocess.run([AGE_KEYGEN, "-y", str(other)], capture_output=True, text=True, check=True).stdout.strip()
    plain = payload(tmp_path, 100000)
    subprocess.run([AGE, "-r", other_r, "-r", recipient, "-o", str(tmp_path / "f.age"), str(plain)], check=True)
    # the user's own identity by default
    ok(cloister("dataset", "decrypt", "-o", str(tmp_path / "out"), str(tmp_path / "f.age"), config=config))
    assert (tmp_path / "out").read_bytes() == plain.read_bytes()
    # ours to two recipients: each identity opens it with age
    ok(cloister("age", "encrypt", "-r", other_r, "--self", "-o", str(tmp_path / "g.age"), str(plain), config=config))
    for i in (ident, other):
        out = subprocess.run([AGE, "-d", "-i", str(i), str(tmp_path / "g.age")], capture_output=True, check=True)
        assert out.stdout == plain.read_bytes()
    # an identity that is not a recipient: no match, nothing written
    stranger = tmp_path / "stranger.txt"
    subprocess.run([AGE_KEYGEN, "-o", str(stranger)], check=True, capture_output=True)
    p = cloister("dataset", "decrypt", "-i", str(stranger), "-o", str(tmp_path / "none"), str(tmp_path / "f.age"),
                 config=config)
    assert p.returncode == 1 and b"no identity matches" in p.stderr
    assert not (tmp_path / "none").exists()


def tampered(data, how):
    """DATA (an age file of 3 full chunks and a short one) altered HOW."""
    hdr_end = data.index(b"\n---") + 1
    hdr_end = data.index(b"\n", hdr_end) + 1
    payload_start = hdr_end + 16
    enc = CHUNK + 16
    b = bytearray(data)
    if how == "header":
        b[20] ^= 1  # inside the version line / first stanza
    elif how == "mac":
        b[hdr_end - 5] = ord("A") if b[hdr_end - 5] != ord("A") else ord("B")
    elif how == "chunk":
        b[payload_start + enc + 100] ^= 0x80
    elif how == "truncated":
        b = b[:payload_start + 2 * enc]
    elif how == "truncated-mid":
        b = b[:len(b) - 10]
    elif how == "reordered":
        c0, c1 = b[payload_start:payload_start + enc], b[payload_start + enc:payload_start + 2 * enc]
        b[payload_start:payload_start + 2 * enc] = c1 + c0
    elif how == "trailing":
        b += b"\0"
    return bytes(b)


@pytest.mark.parametrize("how", ["header", "mac", "chunk", "truncated", "truncated-mid", "reordered", "trailing"])
@pytest.mark.parametrize("producer", ["age", "cloister"])
def test_a_tampered_file_is_refused_and_leaves_no_output(keys, tmp_path, how, producer):
    config, ident, recipient = keys
    plain = payload(tmp_path, 3 * CHUNK + 1000)
    f = tmp_path / "f.age"
    if producer == "age":
        subprocess.run([AGE, "-r", recipient, "-o", str(f), str(plain)], check=True)
    else:
        ok(cloister("age", "encrypt", "-r", recipient, "-o", str(f), str(plain), config=config))
    bad = tmp_path / "bad.age"
    bad.write_bytes(tampered(f.read_bytes(), how))
    out = tmp_path / "out.csv"
    p = cloister("dataset", "decrypt", "-o", str(out), str(bad), config=config)
    assert p.returncode == 1, p.stderr
    assert b"nothing was written" in p.stderr
    assert not out.exists()
    assert [x.name for x in tmp_path.iterdir() if x.name.startswith("out.csv")] == []  # no temporary left
    # the reference tool refuses it too
    assert subprocess.run([AGE, "-d", "-i", str(ident), "-o", os.devnull, str(bad)], capture_output=True).returncode != 0


def test_keys_register_sets_public_keys_for_the_users_own_session_only(shared_server, tmp_path):
    s = shared_server
    docs = []
    for u in ("ana", "ben"):
        docs += [manifest("User", u, {"type": "human"}), manifest("Credential", f"{u}-cli", {"user": u, "type": "authToken"})]
    r = s.request("POST", "/v1/apply", json={"items": docs})
    assert r.status_code == 200, r.text
    tokens = {u: s.request("POST", "/v1/tokens", json={"credential": f"{u}-cli"}).json()["token"] for u in ("ana", "ben")}
    config = tmp_path / "ana-config"
    ok(cloister("keys", "init", config=config))
    shown = json.loads(ok(cloister("keys", "show", "-o", "json", config=config)).stdout)
    p = run_cli(s, "login", "--token", tokens["ana"], config_home=config)
    assert p.returncode == 0, p.stderr
    p = run_cli(s, "keys", "register", config_home=config)
    assert p.returncode == 0, p.stderr
    assert shown["recipient"] in p.stdout
    user = json.loads(run_cli(s, "get", "user", "ana", "-o", "json", env_extra={"CLOISTER_TOKEN": s.token},
                              config_home=config).stdout)
    assert user["status"]["publicKeys"] == shown
    entries = audited(s, "user.keys.register", lambda e: e["actor"]["user"] == "ana")
    assert entries[-1]["outcome"] == "success" and entries[-1]["resource"] == {"kind": "User", "name": "ana"}
    assert entries[-1]["details"] == shown
    assert "AGE-SECRET-KEY" not in json.dumps(entries)

    # ben's session cannot register keys for ana, and neither can the admin: 403, audited
    body = {"approval": shown["approval"], "recipient": "age1xmwwc06ly3ee5rytxm9mflaz2u56jjj36s0mypdrwsvlul66mv4q47ryef"}
    for tok, who in ((tokens["ben"], "ben"), (s.token, "admin")):
        r = s.request("POST", "/v1/users/ana/keys", token=tok, json=body)
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "forbidden"
    assert audited(s, "api.access", lambda e: e["outcome"] == "denied" and "register-keys" in json.dumps(e)
                   and e["actor"]["user"] == "admin" and e["resource"] == {"kind": "User", "name": "ana"})
    assert audited(s, "api.access", lambda e: e["outcome"] == "denied" and "register-keys" in json.dumps(e)
                   and e["actor"]["user"] == "ben")
    user = s.request("GET", "/v1/users/ana").json()
    assert user["status"]["publicKeys"] == shown  # unchanged

    # strict validation of both keys
    ana = tokens["ana"]
    for bad in ({"approval": "AAAA", "recipient": shown["recipient"]},
                {"approval": shown["approval"], "recipient": shown["recipient"].upper()},
                {"approval": shown["approval"],
                 "recipient": shown["recipient"][:-1] + ("p" if shown["recipient"][-1] == "q" else "q")},
                {"approval": shown["approval"]},
                {**shown, "extra": "x"}):
        r = s.request("POST", "/v1/users/ana/keys", token=ana, json=bad)
        assert r.status_code == 400, (bad, r.text)
    assert s.request("GET", "/v1/users/ana/keys", token=ana).json()["publicKeys"] == shown
    assert s.request("POST", "/v1/users/ana/keys", token="").status_code == 401
