"""The cloister CLI on its own: usage errors, local validation of manifests
before anything is sent, and the saved session's safety checks. No server
runs here; the server URL points at a closed port, so any test that got as
far as the network would fail with "cannot reach"."""
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import CLOISTER, ROOT, sanitizer_env


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cli(tmp_path):
    """Runs cloister with a private config dir and an unreachable server."""
    config = tmp_path / "config"
    server = f"https://127.0.0.1:{closed_port()}"

    def run(*args, input=None, env_extra=None, cwd=None):
        env = sanitizer_env()
        env["XDG_CONFIG_HOME"] = str(config)
        env["CLOISTER_SERVER"] = server
        for k in ("CLOISTER_CA", "CLOISTER_TOKEN"):
            env.pop(k, None)
        env.update(env_extra or {})
        p = subprocess.run([str(CLOISTER), *args], input=input, capture_output=True, text=True,
                           env=env, timeout=60, cwd=cwd or tmp_path)
        assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr
        return p

    run.config = config
    run.server = server
    return run


@pytest.mark.parametrize("args", [
    [],
    ["frobnicate"],
    ["--bogus", "whoami"],
    ["-o", "xml", "whoami"],
    ["get"],
    ["get", "gadgets"],
    ["get", "services", "Not_A_Name"],
    ["get", "services", "a", "b"],
    ["get", "services", "-o", "table"],
    ["delete", "services"],
    ["delete", "services", "../etc"],
    ["apply"],
    ["apply", "-f"],
    ["apply", "-f", "-", "-f", "-"],
    ["apply", "-f", "x.yaml", "extra"],
    ["login"],
    ["login", "--token", "has space"],
    ["login", "--token", "a\nb"],
    ["logout", "now"],
    ["whoami", "extra"],
])
def test_usage_errors_exit_2_with_usage(cli, args):
    p = cli(*args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "usage: cloister" in p.stderr
    assert p.stdout == ""


def test_help_and_version_exit_0(cli):
    p = cli("--help")
    assert p.returncode == 0 and "usage: cloister" in p.stdout
    for cmd in ("login", "logout", "whoami", "apply", "get", "delete"):
        assert f"  {cmd} " in p.stdout
    assert "services" in p.stdout and "identityproviders" in p.stdout
    p = cli("get", "--help")
    assert p.returncode == 0 and p.stdout.startswith("usage: cloister get KIND [NAME]")
    assert cli("help").returncode == 0
    p = cli("--version")
    assert p.returncode == 0 and p.stdout.startswith("cloister ")


def test_plain_http_servers_are_refused(cli):
    p = cli("--server", "http://127.0.0.1:7443", "get", "users", env_extra={"CLOISTER_TOKEN": "t"})
    assert p.returncode == 2
    assert "invalid server URL" in p.stderr


BAD = """\
apiVersion: cloister.dev/v1
kind: Group
metadata: {name: devs}
---
apiVersion: cloister.dev/v1
kind: User
metadata: {name: alice}
spec: {groups: [devs]}
---
apiVersion: cloister.dev/v1
kind: Service
metadata:
  name: wiki
spec:
  policies: [devs-read]
  upstrem:
    url: http://127.0.0.1:9000
"""


def test_apply_names_file_document_line_field_and_reason(cli, tmp_path):
    (tmp_path / "bad.yaml").write_text(BAD)
    p = cli("apply", "-f", "bad.yaml")
    assert p.returncode == 1
    assert p.stderr == ("error: bad.yaml:16: document 3 (Service/wiki): spec.upstrem: unknown field; "
                        "known fields are: upstream, hosts, policies, inlinePolicies, inject, attrs, "
                        "failClosed, passAuthorization, allowPathParameters, trustTraceContext, limits, plugins\n")
    assert p.stdout == ""


def test_apply_reports_every_invalid_document(cli, tmp_path):
    (tmp_path / "two.yaml").write_text(
        "apiVersion: cloister.dev/v1\nkind: Policy\nmetadata: {name: p}\n"
        "spec:\n  rules:\n  - effect: permit\n    condition: {matchAny: true}\n"
        "---\n"
        "apiVersion: cloister.dev/v1\nkind: Gadget\nmetadata: {name: g}\n"
        "---\n"
        "apiVersion: cloister.dev/v1\nkind: User\nmetadata: {name: Alice}\n")
    p = cli("apply", "-f", "two.yaml")
    assert p.returncode == 1
    lines = p.stderr.splitlines()
    assert lines[0] == ("error: two.yaml:6: document 1 (Policy/p): spec.rules[0].effect: "
                        "must be one of: allow, deny (got \"permit\")")
    assert lines[1].startswith("error: two.yaml:10: document 2 (Gadget/g): kind: unknown kind \"Gadget\"")
    assert lines[2].startswith("error: two.yaml:15: document 3 (User/Alice): metadata.name: must be a DNS-1123 label")
    assert len(lines) == 3


@pytest.mark.parametrize("text, message", [
    ("a: &x [1]\nb: *x\n", "error: m.yaml: document 1 line 1 column 4: anchors and aliases are not allowed"),
    ("kind: Group\nkind: User\n", "error: m.yaml: document 1 line 2 column 1: duplicate key \"kind\""),
    ("kind: Group\n---\n- a\n", "error: m.yaml: document 2 line 3: a document must be a mapping"),
    ("kind: [Group\n", "error: m.yaml: document 1 line 2 column 1: did not find expected ',' or ']'"),
    ('[{"kind": "Group"}, 3]', "error: m.yaml: document 2: a document must be an object"),
])
def test_apply_reports_malformed_manifests(cli, tmp_path, text, message):
    (tmp_path / "m.yaml").write_text(text)
    p = cli("apply", "-f", "m.yaml")
    assert p.returncode == 1
    assert p.stderr.startswith(message), p.stderr


def test_apply_refuses_the_same_resource_twice(cli, tmp_path):
    doc = "apiVersion: cloister.dev/v1\nkind: Group\nmetadata: {name: devs}\n"
    (tmp_path / "a.yaml").write_text(doc)
    (tmp_path / "b.yaml").write_text("# again\n" + doc)
    p = cli("apply", "-f", "a.yaml", "-f", "b.yaml")
    assert p.returncode == 1
    assert p.stderr == ("error: b.yaml:4: document 1 (Group/devs): metadata.name: "
                        "the same resource as document 1 of a.yaml\n")


def test_apply_of_an_empty_manifest_fails(cli, tmp_path):
    (tmp_path / "empty.yaml").write_text("# nothing here\n---\n")
    p = cli("apply", "-f", "empty.yaml")
    assert p.returncode == 1
    assert p.stderr == "error: no documents in empty.yaml\n"
    p = cli("apply", "-f", "missing.yaml")
    assert p.returncode == 1
    assert p.stderr == "error: cannot read missing.yaml: No such file or directory\n"


def test_valid_manifests_get_as_far_as_logging_in(cli, tmp_path):
    """The quickstart and a JSON List validate; without a session the CLI
    stops before the network."""
    p = cli("apply", "-f", str(ROOT / "examples" / "quickstart.yaml"))
    assert p.returncode == 1
    assert p.stderr == "error: not logged in; run: cloister login --token TOKEN\n"
    doc = {"kind": "List", "items": [
        {"apiVersion": "cloister.dev/v1", "kind": "Secret", "metadata": {"name": "s"},
         "spec": {"data": {"token": "x"}}}]}
    p = cli("apply", "-f", "-", input=json.dumps(doc))
    assert p.returncode == 1 and "not logged in" in p.stderr


def test_unreachable_server_is_a_failure(cli):
    p = cli("get", "users", env_extra={"CLOISTER_TOKEN": "some-token"})
    assert p.returncode == 1
    assert p.stderr.startswith(f"error: cannot reach {cli.server}: ")
    assert "some-token" not in p.stderr


def test_a_session_file_others_can_read_is_refused(cli):
    d = cli.config / "cloister"
    d.mkdir(parents=True)
    f = d / "session.json"
    f.write_text(json.dumps({"server": cli.server, "ca": None, "token": "tok"}))
    f.chmod(0o644)
    p = cli("whoami")
    assert p.returncode == 1
    assert "refusing the session file" in p.stderr and "tok" not in p.stderr
    f.chmod(0o600)
    p = cli("whoami")
    assert p.returncode == 1 and p.stderr.startswith(f"error: cannot reach {cli.server}")
    f.write_text("{not json")
    p = cli("whoami")
    assert p.returncode == 1 and "is malformed; log in again" in p.stderr


def test_the_session_token_goes_only_to_its_server(cli):
    d = cli.config / "cloister"
    d.mkdir(parents=True, mode=0o700)
    f = d / "session.json"
    f.write_text(json.dumps({"server": cli.server, "ca": None, "token": "tok"}))
    f.chmod(0o600)
    p = cli("--server", "https://elsewhere.invalid", "get", "users")
    assert p.returncode == 1
    assert p.stderr.startswith("error: not logged in to https://elsewhere.invalid (the saved session is for")


def test_logout_without_a_session_is_fine(cli):
    p = cli("logout")
    assert p.returncode == 0 and p.stdout == "not logged in\n"
