"""The cloister CLI against a real cloisterd: logging in, the saved session,
apply / get / delete, errors the server reports, and TLS verification."""
import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import CLOISTER, ROOT, sanitizer_env


def cli(*args, config, server=None, ca=None, token=None, input=None, cwd=None):
    """Runs cloister with only what is given: no server, CA or token from the
    environment unless passed here."""
    env = sanitizer_env()
    env["XDG_CONFIG_HOME"] = str(config)
    for k in ("CLOISTER_SERVER", "CLOISTER_CA", "CLOISTER_TOKEN"):
        env.pop(k, None)
    if server:
        env["CLOISTER_SERVER"] = server
    if ca:
        env["CLOISTER_CA"] = ca
    if token:
        env["CLOISTER_TOKEN"] = token
    p = subprocess.run([str(CLOISTER), *args], input=input, capture_output=True, text=True, env=env,
                       timeout=60, cwd=cwd)
    assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr
    return p


@pytest.fixture
def logged_in(shared_server, tmp_path):
    """A config dir holding a session for the shared server."""
    config = tmp_path / "config"
    p = cli("--server", shared_server.url, "--ca", shared_server.ca, "login", "--token", shared_server.token,
            config=config)
    assert p.returncode == 0, p.stderr
    return config


def test_login_saves_a_private_session_with_an_absolute_ca(shared_server, tmp_path):
    config = tmp_path / "config"
    (tmp_path / "work").mkdir()
    ca_copy = tmp_path / "work" / "ca.pem"
    ca_copy.write_bytes(Path(shared_server.ca).read_bytes())
    p = cli("login", "--ca", "ca.pem", "--server", shared_server.url, "--token", "-",
            input=shared_server.token + "\n", config=config, cwd=tmp_path / "work")
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"logged in to {shared_server.url} as admin\n"
    d = config / "cloister"
    assert d.stat().st_mode & 0o777 == 0o700
    f = d / "session.json"
    assert f.stat().st_mode & 0o777 == 0o600
    saved = json.loads(f.read_text())
    # the credential token was exchanged for a session; only the session is kept
    assert sorted(saved) == ["access_token", "ca", "refresh_token", "server", "session"]
    assert saved["server"] == shared_server.url and saved["ca"] == str(ca_copy.resolve())
    assert shared_server.token not in f.read_text()


def test_whoami_uses_the_session_and_never_prints_the_token(shared_server, logged_in):
    p = cli("whoami", config=logged_in)
    assert p.returncode == 0, p.stderr
    assert p.stdout == ("user        admin\n"
                        "email       <none>\n"
                        "groups      admins\n"
                        "credential  admin-bootstrap\n"
                        f"server      {shared_server.url}\n")
    p = cli("whoami", "-o", "json", config=logged_in)
    assert json.loads(p.stdout)["credential"] == "admin-bootstrap"
    p = cli("-o", "yaml", "whoami", config=logged_in)
    assert yaml.safe_load(p.stdout)["groups"] == ["admins"]
    for q in (p, cli("whoami", config=logged_in)):
        assert shared_server.token not in q.stdout + q.stderr


def test_a_refused_token_saves_nothing(shared_server, tmp_path):
    config = tmp_path / "config"
    bad = "clst_" + "A" * 43
    p = cli("--server", shared_server.url, "--ca", shared_server.ca, "login", "--token", bad, config=config)
    assert p.returncode == 1
    assert p.stderr.startswith("error: the server refused the token: ")
    assert bad not in p.stderr
    assert not (config / "cloister" / "session.json").exists()


def test_cloister_token_overrides_the_session(shared_server, logged_in):
    p = cli("whoami", config=logged_in, token="clst_" + "B" * 43)
    assert p.returncode == 1
    assert "(log in again: cloister login --token TOKEN)" in p.stderr
    p = cli("whoami", config=logged_in.parent / "empty", server=shared_server.url, ca=shared_server.ca,
            token=shared_server.token)
    assert p.returncode == 0 and p.stdout.startswith("user        admin\n")


def test_logout_forgets_the_session(shared_server, logged_in):
    p = cli("logout", config=logged_in)
    assert p.returncode == 0 and p.stdout == "logged out\n"
    assert not (logged_in / "cloister" / "session.json").exists()
    p = cli("whoami", config=logged_in)
    assert p.returncode == 1 and "not logged in" in p.stderr


def test_the_server_certificate_is_verified(shared_server, tmp_path):
    config = tmp_path / "config"
    p = cli("whoami", config=config, server=shared_server.url, token=shared_server.token)
    assert p.returncode == 1
    assert p.stderr.startswith(f"error: cannot reach {shared_server.url}: ")
    other = tmp_path / "other-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(tmp_path / "k.pem"), "-out", str(other), "-subj", "/CN=other",
                    "-days", "1"], check=True, capture_output=True)
    p = cli("whoami", config=config, server=shared_server.url, ca=str(other), token=shared_server.token)
    assert p.returncode == 1 and "cannot reach" in p.stderr
    p = cli("login", "--token", shared_server.token, config=config, server=shared_server.url)
    assert p.returncode == 1 and "cannot reach" in p.stderr
    assert not (config / "cloister" / "session.json").exists()


MANIFEST = """\
apiVersion: cloister.dev/v1
kind: Group
metadata: {name: cli-devs}
spec: {policies: [cli-read]}
---
apiVersion: cloister.dev/v1
kind: User
metadata: {name: cli-alice}
spec: {email: cli-alice@example.com, groups: [cli-devs]}
---
apiVersion: cloister.dev/v1
kind: Service
metadata: {name: cli-wiki}
spec:
  upstream: {url: "http://127.0.0.1:9000"}
  hosts: [cli-wiki.example.com]
  policies: [cli-read]
---
apiVersion: cloister.dev/v1
kind: Policy
metadata: {name: cli-read}
spec:
  rules:
  - {effect: allow, condition: {match: '"cli-devs" in ctx.user.groups'}}
---
apiVersion: cloister.dev/v1
kind: Secret
metadata: {name: cli-token}
spec: {data: {token: "cli-secret-value-93b1", user: bob}}
"""


def test_apply_get_delete(shared_server, logged_in, tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text(MANIFEST)
    p = cli("apply", "-f", str(f), config=logged_in)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["group/cli-devs created", "user/cli-alice created", "service/cli-wiki created",
                                     "policy/cli-read created", "secret/cli-token created"]
    p = cli("apply", "-f", "-", input=MANIFEST.replace("bob", "carol"), config=logged_in)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == "group/cli-devs unchanged"
    assert p.stdout.splitlines()[4] == "secret/cli-token configured"

    p = cli("get", "services", config=logged_in)
    assert p.returncode == 0, p.stderr
    header, *rows = p.stdout.splitlines()
    assert header.split() == ["NAME", "UPSTREAM", "HOSTS", "POLICIES", "AGE"]
    row = next(r.split() for r in rows if r.startswith("cli-wiki "))
    assert row[1:4] == ["http://127.0.0.1:9000", "cli-wiki.example.com", "cli-read"]
    assert row[4].endswith("s")

    p = cli("get", "user", "cli-alice", config=logged_in)
    assert p.stdout.splitlines()[1].split()[:4] == ["cli-alice", "human", "cli-alice@example.com", "cli-devs"]
    p = cli("get", "Policies", "cli-read", config=logged_in)
    assert p.stdout.splitlines()[1].split()[:2] == ["cli-read", "1"]

    p = cli("get", "services", "cli-wiki", "-o", "json", config=logged_in)
    doc = json.loads(p.stdout)
    assert doc["kind"] == "Service" and doc["spec"]["upstream"] == {"url": "http://127.0.0.1:9000"}
    p = cli("get", "services", "-o", "json", config=logged_in)
    assert json.loads(p.stdout)["kind"] == "List"
    p = cli("get", "users", "-o", "yaml", config=logged_in)
    docs = list(yaml.safe_load_all(p.stdout))
    assert "cli-alice" in [d["metadata"]["name"] for d in docs]

    # secrets show key names, never values
    for args in (["get", "secrets"], ["get", "secrets", "cli-token", "-o", "yaml"], ["get", "secrets", "-o", "json"]):
        p = cli(*args, config=logged_in)
        assert p.returncode == 0 and "cli-secret-value" not in p.stdout and "carol" not in p.stdout
    p = cli("get", "secrets", "cli-token", config=logged_in)
    assert p.stdout.splitlines()[1].split()[:2] == ["cli-token", "token,user"]

    # what get -o yaml prints can be applied back
    p = cli("get", "groups", "cli-devs", "-o", "yaml", config=logged_in)
    p = cli("apply", "-f", "-", input=p.stdout, config=logged_in)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "group/cli-devs unchanged\n"

    p = cli("delete", "services", "cli-wiki", config=logged_in)
    assert p.returncode == 0 and p.stdout == "service/cli-wiki deleted\n"
    p = cli("get", "services", "cli-wiki", config=logged_in)
    assert p.returncode == 1 and p.stderr.startswith("error: ")
    p = cli("delete", "service", "cli-wiki", config=logged_in)
    assert p.returncode == 1 and p.stderr.startswith("error: ")


def test_a_document_the_server_refuses_is_named_and_nothing_is_written(shared_server, logged_in, tmp_path):
    f = tmp_path / "g.yaml"
    f.write_text("apiVersion: cloister.dev/v1\nkind: Group\nmetadata: {name: cli-stale}\n")
    assert cli("apply", "-f", str(f), config=logged_in).returncode == 0
    f.write_text("apiVersion: cloister.dev/v1\nkind: Group\nmetadata: {name: cli-fresh}\n"
                 "---\n"
                 "apiVersion: cloister.dev/v1\nkind: Group\n"
                 "metadata:\n  name: cli-stale\n  resourceVersion: \"1\"\n"
                 "spec: {policies: [x]}\n")
    p = cli("apply", "-f", str(f), config=logged_in)
    assert p.returncode == 1
    assert p.stderr.startswith(f"error: {f}:"), p.stderr
    assert ": document 2 (Group/cli-stale): " in p.stderr
    p = cli("get", "groups", "cli-fresh", config=logged_in)
    assert p.returncode == 1


def test_quickstart(server, tmp_path):
    config = tmp_path / "config"
    p = cli("--ca", server.ca, "--server", server.url, "login", "--token", server.token, config=config)
    assert p.returncode == 0, p.stderr
    p = cli("apply", "-f", str(ROOT / "examples" / "quickstart.yaml"), config=config)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["group/devs created", "user/alice created", "user/bob created",
                                     "credential/alice-cli created", "service/wiki created",
                                     "policy/devs-read created"]
    p = cli("get", "services", config=config)
    assert [r.split()[0] for r in p.stdout.splitlines()[1:]] == ["wiki"]
    p = cli("get", "identityproviders", config=config)
    assert p.returncode == 0 and p.stdout == "" and p.stderr == "no identityproviders found\n"
