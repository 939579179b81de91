"""Roles apart (issue 19): `cloisterd --init` once, then the kms, the audit
and the runner each in a cloisterd process of its own (roles: [kms], [audit],
[runner]) and one with [api, proxy], each with its own copy of the data dir
as on machines of their own, talking HTTP/JSON over TCP with mutual TLS on
loopback. The api process's proxy follows the api's configuration on
api.roleListen with its role certificate. The quickstart works through them;
a client presenting another role's certificate, or none, is refused by each
server; `--check` names each missing peer; the sealed remote kms is unsealed
with `cloisterd unseal`."""
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time

import pytest
import requests
import yaml

from conftest import (CLOISTERD, ROOT, Server, audited, free_port, manifest, open_for_roles, run_cli,
                      run_documented, sanitizer_env)
from test_runner import channel, enclave_status, remove, wait_for

PASSPHRASE = "a passphrase of at least 8"
# who may call whom (the local sockets' allow-lists): server role -> roles allowed
ALLOWED = {"kms": {"api", "runner"}, "audit": {"api", "proxy", "kms", "runner"}, "runner": {"api"},
           "api": {"proxy", "runner"}}
ROLES = ("api", "proxy", "kms", "audit", "runner")


def cloisterd(*args, input=None):
    return subprocess.run([str(CLOISTERD), *args], capture_output=True, text=True, input=input,
                          env=sanitizer_env(), timeout=120)


def wait_log(server, text, timeout=60):
    """Waits until SERVER's log shows TEXT (a role process has no API to ask)."""
    deadline = time.time() + timeout
    while text not in server.read_log():
        assert server.proc.poll() is None, f"cloisterd exited {server.proc.returncode}:\n{server.read_log()[-4000:]}"
        assert time.time() < deadline, f"{text!r} not in the log after {timeout}s:\n{server.read_log()[-4000:]}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The four processes, started in the order they need each other."""
    tmp = tmp_path_factory.mktemp("apart")
    open_for_roles(tmp)
    init = tmp / "init.yaml"
    init.write_text(yaml.safe_dump({"dataDir": str(tmp / "init"), "roles": list(ROLES),
                                    "kms": {"seal": {"mode": "passphrase"}}}))
    p = cloisterd("--init", "--config", str(init), input="")
    assert p.returncode == 0, p.stderr
    ports = {role: free_port() for role in ("kms", "audit", "runner", "api")}  # api: its listener for roles
    url = {role: f"https://127.0.0.1:{port}" for role, port in ports.items()}
    api = Server(tmp / "ap", config=tmp / "ap.yaml")  # its API port, which the runner needs, is chosen here
    docs = {
        "kms": {"roles": ["kms"], "kms": {"listen": f"127.0.0.1:{ports['kms']}", "seal": {"mode": "passphrase"}},
                "peers": {"audit": url["audit"]}},
        "audit": {"roles": ["audit"], "audit": {"listen": f"127.0.0.1:{ports['audit']}"}},
        "runner": {"roles": ["runner"], "runner": {"listen": f"127.0.0.1:{ports['runner']}"},
                   "peers": {"api": api.url, "apiRoles": url["api"], "audit": url["audit"]}},
        "ap": {"roles": ["api", "proxy"], "api": {"roleListen": f"127.0.0.1:{ports['api']}"},
               "peers": {"kms": url["kms"], "audit": url["audit"], "runner": url["runner"]}},
    }
    procs = {}
    for name, doc in docs.items():
        shutil.copytree(tmp / "init", tmp / name, symlinks=True)  # a machine's own copy of what --init made
        if name == "runner":  # no role token there: it reaches the api by its certificate (peers.apiRoles)
            (tmp / name / "runner" / "runner.token").unlink()
        path = tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"dataDir": str(tmp / name), **doc}, sort_keys=False))
        check = cloisterd("--config", str(path), "--check")
        assert check.returncode == 0, check.stderr
        if name != "ap":
            procs[name] = Server(tmp / name, config=path)
    try:
        for name in ("audit", "kms", "runner"):
            procs[name].start(wait=False)
            wait_log(procs[name], '"msg":"every role is ready"')
        procs["ap"] = api.start()
    except BaseException:
        for s in procs.values():
            if s.proc:
                s.kill9()
        raise
    yield {"tmp": tmp, "pki": tmp / "init", "url": url, "procs": procs, "api": api}
    for name in ("ap", "runner", "kms", "audit"):
        procs[name].stop()


def unseal(cluster, secret=PASSPHRASE):
    return cloisterd("unseal", "--kms", cluster["url"]["kms"], "--pki-dir", str(cluster["pki"]), "--passphrase-fd",
                     "0", input=secret + "\n")


@pytest.fixture(scope="module")
def unsealed(cluster):
    """The remote kms, sealed from its start (no passphrase file), is
    unsealed by `cloisterd unseal` over mutual TLS: the first unseal makes
    the root key."""
    api = cluster["api"]
    ready = requests.get(api.url + "/readyz", verify=api.ca)
    assert ready.status_code == 503 and ready.json()["roles"]["kms"] == "sealed", ready.text
    assert ready.json()["seal"] == {"mode": "passphrase", "sealed": True}, ready.text
    r = api.request("POST", "/v1/secrets", json=manifest("Secret", "while-sealed", {"data": {"k": "v"}}))
    assert r.status_code == 503, r.text  # the remote kms said sealed: nothing stored in the clear
    p = unseal(cluster)
    assert p.returncode == 0 and "the KMS is unsealed" in p.stdout, p.stdout + p.stderr
    # the api's /readyz follows the remote kms (asked every second)
    wait_for(lambda: requests.get(api.url + "/readyz", verify=api.ca).status_code == 200, what="/readyz 200")
    ready = requests.get(api.url + "/readyz", verify=api.ca).json()
    assert ready["seal"] == {"mode": "passphrase", "sealed": False} and ready["roles"]["kms"] == "ready", ready
    return cluster


def test_a_sealed_remote_kms_is_unsealed_with_cloisterd_unseal(unsealed):
    p = unseal(unsealed)
    assert p.returncode == 0 and "already unsealed" in p.stdout, p.stdout + p.stderr
    # the unseal was audited by the kms role, in the remote audit log
    api = unsealed["api"]
    assert audited(api, "kms.unseal", lambda e: e.get("outcome") == "success" and e.get("appender") == "kms")
    # without the pki dir's certificates there is no way in
    p = cloisterd("unseal", "--kms", unsealed["url"]["kms"], "--pki-dir", str(unsealed["tmp"] / "nowhere"))
    assert p.returncode == 1 and "cannot read" in p.stderr, p.stderr


def test_the_quickstart_works_through_the_roles_apart(unsealed, tmp_path):
    api = unsealed["api"]
    wiki_port = free_port()
    wiki = subprocess.Popen([sys.executable, "-m", "http.server", str(wiki_port), "--bind", "127.0.0.1",
                             "--directory", str(ROOT / "examples" / "wiki")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        docs = list(yaml.safe_load_all((ROOT / "examples" / "quickstart.yaml").read_text()))
        for d in docs:
            if d["kind"] == "Service":
                d["spec"]["upstream"]["url"] = f"http://127.0.0.1:{wiki_port}"
        quickstart = tmp_path / "quickstart.yaml"
        quickstart.write_text(yaml.safe_dump_all(docs))
        home = tmp_path / "config"
        assert run_cli(api, "login", "--token", "-", input=api.token, config_home=home).returncode == 0
        p = run_cli(api, "apply", "-f", str(quickstart), config_home=home)
        assert p.returncode == 0 and "service/wiki created" in p.stdout, p.stdout + p.stderr
        p = run_cli(api, "token", "create", "alice-cli", "-o", "json", config_home=home)
        assert p.returncode == 0, p.stderr
        access = requests.post(api.url + "/v1/auth/token", json={"token": json.loads(p.stdout)["token"]},
                               verify=api.ca).json()["access_token"]
        proxy = api.extra_args[api.extra_args.index("--proxy-listen") + 1]
        headers = {"Host": "wiki.localhost", "Authorization": f"Bearer {access}"}
        deadline = time.time() + 30
        while (code := requests.get(f"https://{proxy}/", headers=headers, verify=api.ca).status_code) != 200:
            assert time.time() < deadline, code
            time.sleep(0.1)
        # a Secret sealed by the remote kms (refused while it was sealed: the unsealed fixture)
        r = api.request("POST", "/v1/secrets", json=manifest("Secret", "db", {"data": {"password": "hunter22"}}))
        assert r.status_code in (200, 201), r.text
        assert "hunter22" not in r.text
        # the api's and the kms's entries reached the remote audit log; the log verifies
        assert audited(api, "resource.create",
                       lambda e: e["resource"]["kind"] == "Secret" and e["resource"]["name"] == "db")
        p = run_cli(api, "audit", "verify", config_home=home)
        assert p.returncode == 0 and "verified" in p.stdout, p.stdout + p.stderr
        # the api's controller reaches the remote runner, whose refusal the Enclave's status carries
        r = api.request("POST", "/v1/apply", json={"items": [manifest("Enclave", "bad", {"bundle": "/nonexistent"})]})
        assert r.status_code == 200, r.text
        wait_for(lambda: "cannot measure" in ((enclave_status(api, "bad") or {}).get("lastEvent") or ""),
                 what="the runner's refusal in the Enclave's status")
    finally:
        wiki.terminate()
        wiki.wait()


def role_call(cluster, server, role, path="/v1/status"):
    """POSTs to PATH on SERVER's mutual-TLS listener presenting ROLE's
    certificate (None: no certificate), checking that the server names
    SERVER. Returns the HTTP status, or the error that ended the exchange."""
    pki = cluster["pki"]
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if role:
        ctx.load_cert_chain(str(pki / "roles" / f"{role}.pem"), str(pki / "roles" / f"{role}.key"))
    port = int(cluster["url"][server].rsplit(":", 1)[1])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=f"{server}.cloister.internal") as s:
                s.sendall(f"POST {path} HTTP/1.1\r\nHost: {server}\r\nContent-Type: application/json\r\n"
                          "Content-Length: 2\r\nConnection: close\r\n\r\n{}".encode())
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as e:
        return e
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else answer


@pytest.mark.parametrize("server,path", [("kms", "/v1/status"), ("audit", "/v1/checkpoint"),
                                         ("runner", "/v1/sandboxes"), ("api", "/v1/apply")])
def test_each_server_takes_only_the_roles_it_serves(unsealed, server, path):
    procs = dict(unsealed["procs"], api=unsealed["procs"]["ap"])
    for role in ROLES:
        got = role_call(unsealed, server, role, path)
        if role in ALLOWED[server]:
            assert isinstance(got, int), (role, got)  # an HTTP answer, whatever the endpoint said
        else:
            assert not isinstance(got, int), (role, got)  # the handshake failed: no request was read
            socket_name = "api.roleListen" if server == "api" else f"{server}.sock"
            wait_log(procs[server], f'"msg":"refused a peer\'s certificate","socket":"{socket_name}","role":"{role}"')
    got = role_call(unsealed, server, None, path)
    assert not isinstance(got, int), got
    wait_log(procs[server], '"msg":"refused a peer: the mutual TLS handshake failed","server":')
    assert '"reason":"no client certificate"' in procs[server].read_log()


def stream_head(cluster, role, token=None):
    """GETs /v1/proxy/config on the api's listener for roles presenting
    ROLE's certificate (and TOKEN as a bearer, when given); returns the
    answer's status line and headers (the stream itself never ends)."""
    pki = cluster["pki"]
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "roles" / f"{role}.pem"), str(pki / "roles" / f"{role}.key"))
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    port = int(cluster["url"]["api"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="api.cloister.internal") as s:
            s.sendall(f"GET /v1/proxy/config HTTP/1.1\r\nHost: api\r\n{auth}Accept: text/event-stream\r\n\r\n"
                      .encode())
            head = b""
            while b"\r\n\r\n" not in head and (chunk := s.recv(65536)):
                head += chunk
    return head.split(b"\r\n\r\n")[0].decode()


def test_the_api_takes_a_role_by_its_certificate(unsealed):
    """On api.roleListen the caller is the role its certificate names, one
    rule with its token: the proxy's certificate opens the configuration
    stream without a token, the runner's does not (it is not the proxy's
    identity), and the admin's token beside the proxy's certificate changes
    nothing. The proxy of the api process follows the stream there (the
    quickstart answers through it)."""
    admin = unsealed["api"].token
    assert stream_head(unsealed, "proxy").startswith("HTTP/1.1 200")
    assert stream_head(unsealed, "proxy", token=admin).startswith("HTTP/1.1 200")
    assert stream_head(unsealed, "runner").startswith("HTTP/1.1 403")
    # the public listener is as it was: no certificate, a token
    r = requests.get(unsealed["api"].url + "/v1/proxy/config", verify=unsealed["api"].ca, timeout=10)
    assert r.status_code == 401, r.text


def test_the_remote_runner_forwards_to_the_api_by_its_certificate(unsealed, tmp_path):
    """The runner process reaches the api at peers.apiRoles: an enclave's
    challenge it forwards is answered as the runner's identity, with no
    token sent (the certificate says who calls)."""
    api, runner = unsealed["api"], unsealed["procs"]["runner"]
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "enclave.yaml").write_text('command: ["/bin/sleep", "600"]\n')
    os.chmod(bundle, 0o755)
    r = api.request("POST", "/v1/apply", json={"items": [manifest("Enclave", "apart", {"bundle": str(bundle)})]})
    assert r.status_code == 200, r.text
    try:
        wait_for(lambda: (enclave_status(api, "apart") or {}).get("ready") == 1, what="a running replica")
        # its channel is the remote runner's, in that machine's data dir
        status, answer = wait_for(lambda: (lambda a: a if a[0] == 200 else None)(
            channel(runner, "apart-1", "POST", "/v1/attest/challenge", {})), what="the forwarded challenge")
        assert len(answer["nonce"]) == 64, answer
        wait_log(runner, '"msg":"forwarded an enclave\'s call to the API","sandbox":"apart-1","call":"challenge",'
                 '"status":"200"')
    finally:
        remove(api, "apart")


def test_a_client_checks_the_server_names_the_role_it_meant(unsealed):
    """The proxy's certificate is the cluster CA's too, but the audit's client
    expects audit.cloister.internal: a kms listener answering where the audit
    should be is refused by the client."""
    pki = unsealed["pki"]
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "roles" / "api.pem"), str(pki / "roles" / "api.key"))
    port = int(unsealed["url"]["kms"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError, match="audit.cloister.internal"):
            ctx.wrap_socket(raw, server_hostname="audit.cloister.internal")


def kms_connections(api):
    """The mutual-TLS connections the api process opened to the kms (its
    /metrics): one handshake each."""
    m = api.request("GET", "/metrics")
    assert m.status_code == 200, m.text
    return int(re.search(r'^cloister_peer_tls_connections_total\{role="kms"\} (\d+)$', m.text, re.M).group(1))


def test_the_api_keeps_one_tls_connection_to_the_kms(unsealed):
    """Calls to the remote kms one after another reuse the api's mutual-TLS
    connection: one handshake for many calls, not one per call."""
    api = unsealed["api"]
    r = api.request("POST", "/v1/keys", json=manifest("Key", "kept-connection", {"purpose": "encrypt"}))
    assert r.status_code in (200, 201), r.text
    body = {"key": "kept-connection", "plaintext": "MDEyMzQ1Njc4OWFiY2RlZg=="}
    assert api.request("POST", "/v1/kms/encrypt", json=body).status_code == 200
    before = kms_connections(api)
    assert before >= 1
    for _ in range(40):
        r = api.request("POST", "/v1/kms/encrypt", json=body)
        assert r.status_code == 200, r.text
    # besides the pooled handle the calls reuse, the api's seal watch asks
    # the kms every second, possibly on a second handle at the same moment
    opened = kms_connections(api) - before
    assert opened <= 2, f"{opened} new connections to the kms for 40 calls"


def test_check_names_each_missing_peer(tmp_path):
    for roles, need in ((["api"], "roles [api] need peers.kms, peers.audit, peers.runner"),
                        (["proxy"], "roles [proxy] need peers.api, peers.audit"),
                        (["kms", "runner"], "roles [kms, runner] need peers.api, peers.audit"),
                        (["api", "proxy"], "roles [api, proxy] need peers.kms, peers.audit, peers.runner")):
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"dataDir": str(tmp_path / "d"), "roles": roles,
                                        "kms": {"seal": {"mode": "passphrase"}}}, sort_keys=False))
        p = cloisterd("--config", str(path), "--check")
        assert p.returncode == 1 and f"{path}:2: roles: {need}: " in p.stderr, p.stderr


def test_the_documented_example_runs(tmp_path):
    """docs/deployment.md "Roles on several machines", as written (on free ports)."""
    rc, out, err = run_documented("roles-apart", tmp_path, ports=("7443", "7444", "7445", "7446", "8443"))
    logs = {m: (tmp_path / f"{m}.log").read_text(errors="replace") if (tmp_path / f"{m}.log").exists() else ""
            for m in ("audit", "kms", "runner", "front")}
    assert rc == 0, out + err + "".join(log[-2000:] for log in logs.values())
    assert "the KMS is unsealed" in out
    assert re.search(r"^db\s+password\b", out, re.M), out
    assert re.search(r"^verified \d+ entries", out, re.M), out
    assert re.search(r"^status\s+ready$", out, re.M), out
    for log in logs.values():
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
            assert marker not in log, log[-3000:]
