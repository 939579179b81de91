"""cloisterd --config FILE: --check lists every problem by file, line and
key; --init prepares a cluster once; a started cluster serves the
quickstart, answers /healthz and /readyz (API and proxy listeners) and
`cloister status`; a KMS sealed by hand keeps /readyz 503 until
`cloisterd unseal`."""
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time

import pytest
import requests
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from conftest import CLOISTER, CLOISTERD, ROOT, Server, free_port, pg_ctl, run_cli, sanitizer_env
from otlp_receiver import Receiver

PASSPHRASE = "correct horse battery staple"
ROLES = ["api", "kms", "audit", "runner", "proxy"]


def cloisterd(*args, input=None):
    """cloisterd ARGS in a session of its own: no terminal to ask a passphrase on."""
    return subprocess.run([str(CLOISTERD), *args], capture_output=True, text=True, env=sanitizer_env(),
                          input=input, timeout=120, start_new_session=True)


def write_config(tmp_path, seal=None, **extra):
    """A configuration file for every role on this machine, data dir under
    TMP_PATH, the KMS sealed by a passphrase file unless SEAL says otherwise."""
    secret = tmp_path / "unseal"
    secret.write_text(PASSPHRASE + "\n")
    secret.chmod(0o600)
    doc = {
        "domain": "localhost",
        "dataDir": str(tmp_path / "data"),
        "roles": ["api", "proxy", "kms", "audit", "runner"],
        "api": {"listen": f"127.0.0.1:{free_port()}", "threads": 2},
        "proxy": {"listen": f"127.0.0.1:{free_port()}", "threads": 2},
        "kms": {"seal": seal or {"passphraseFile": str(secret)}},
        **extra,
    }
    path = tmp_path / "cloisterd.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_check_accepts_a_good_file(tmp_path):
    path = write_config(tmp_path, telemetry={"otlp": {"endpoint": "http://127.0.0.1:4318",
                                                      "headers": {"x-tenant": "t1"}}})
    p = cloisterd("--config", str(path), "--check")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"{path}: the configuration is valid"
    assert not (tmp_path / "data").exists()  # --check changes nothing


def test_check_lists_every_problem_by_file_line_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(f"""domain: example.com
dataDir: {tmp_path}/data
roles: [api, proxy, kms, audit, runner, scheduler]
colour: blue
api:
  listen: "0.0.0.0:99999"
  tls: {{cert: {tmp_path}/missing.pem, key: {tmp_path}/missing.key}}
proxy: {{listen: "nowhere", threads: 0}}
kms:
  seal: {{mode: rot13}}
peers: {{kms: "http://kms.internal:7444"}}
""")
    p = cloisterd("--config", str(path), "--check")
    assert p.returncode == 1, p.stderr
    lines = p.stderr.strip().splitlines()
    f = str(path)
    expected = [
        (3, "roles", "'scheduler' is not a role"),
        (4, "colour", "unknown key (known here: domain, dataDir, roles, store, pki, api, proxy, kms, audit, "
                      "runner, peers, telemetry, plugins)"),
        (6, "api.listen", "'0.0.0.0:99999' is not HOST:PORT"),
        (7, "api.tls.cert", f"cannot read {tmp_path}/missing.pem (No such file or directory)"),
        (7, "api.tls.key", f"cannot read {tmp_path}/missing.key (No such file or directory)"),
        (8, "proxy.listen", "'nowhere' is not HOST:PORT"),
        (8, "proxy.threads", "'0' is not a number from 1 to 64"),
        (10, "kms.seal.mode", "'rot13' is not a seal mode (passphrase, pkcs11 or dev)"),
        (11, "peers.kms", "'http://kms.internal:7444' is not https://HOST[:PORT]"),
    ]
    for line, key, text in expected:
        prefix = f"{f}:{line}: {key}: {text}"
        assert any(x.startswith(prefix) for x in lines), (prefix, lines)
    assert lines[-1] == f"cloisterd: {len(lines) - 1} problems in {f}", lines
    assert len(lines) - 1 == len(expected), lines
    assert not (tmp_path / "data").exists()


def test_check_names_each_peer_a_subset_of_roles_needs(tmp_path):
    path = write_config(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["roles"] = ["api", "proxy"]
    doc["peers"] = {"kms": "https://kms.internal:7444"}
    doc["audit"] = {"listen": "10.0.0.6:7445"}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    text = path.read_text().splitlines()
    line = {k: next(i + 1 for i, x in enumerate(text) if x.startswith(k + ":")) for k in ("roles", "peers", "audit")}
    p = cloisterd("--config", str(path), "--check")
    assert p.returncode == 1
    assert f"{path}:{line['roles']}: roles: roles [api, proxy] need peers.audit, peers.runner: " in p.stderr, p.stderr
    assert f"{path}:{line['audit'] + 1}: audit.listen: this machine does not run audit (roles)" in p.stderr, p.stderr


def test_syntax_errors_and_a_missing_file_are_named(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("domain: localhost\napi: {listen: [\n")
    p = cloisterd("--config", str(path), "--check")
    assert p.returncode == 1 and re.match(rf"{re.escape(str(path))}:\d+: \(syntax\): ", p.stderr), p.stderr
    p = cloisterd("--config", str(tmp_path / "absent.yaml"), "--check")
    assert p.returncode == 1 and f"{tmp_path}/absent.yaml:0: (file): cannot read it" in p.stderr, p.stderr


def test_the_example_configuration_is_valid_but_for_its_credential(tmp_path):
    """deploy/cloisterd.example.yaml: every key right; only the passphrase
    file (a systemd credential, absent here) cannot be read."""
    path = ROOT / "deploy" / "cloisterd.example.yaml"
    p = cloisterd("--config", str(path), "--check")
    assert p.returncode == 1
    problems = p.stderr.strip().splitlines()[:-1]
    assert len(problems) == 1 and re.match(
        rf"{re.escape(str(path))}:\d+: kms.seal.passphraseFile: cannot read /run/credentials/", problems[0]), problems


def test_a_start_before_init_is_refused(tmp_path):
    path = write_config(tmp_path)
    p = cloisterd("--config", str(path))
    assert p.returncode == 1
    assert f"is not initialised; prepare it once with cloisterd --init --config {path}" in p.stderr, p.stderr


def san_dns(pem_path):
    cert = x509.load_pem_x509_certificate(pem_path.read_bytes())
    return (cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName), list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value))


@pytest.fixture(scope="module")
def initialised(tmp_path_factory):
    """A cluster prepared by --init from a configuration (passphrase-file
    seal, telemetry), then started with it."""
    tmp = tmp_path_factory.mktemp("cluster")
    from conftest import open_for_roles
    open_for_roles(tmp)
    path = write_config(tmp, telemetry={"otlp": {"endpoint": "http://127.0.0.1:4318", "headers": {"x-tenant": "t1"}}})
    init = cloisterd("--init", "--config", str(path))
    s = Server(tmp / "data", config=path)
    s.init_result = init
    s.config_path = path
    if init.returncode == 0:
        s.start()
    yield s
    s.stop()


def test_init_prepares_the_cluster_once(initialised):
    s = initialised
    assert s.init_result.returncode == 0, s.init_result.stderr
    data = s.data_dir
    assert f"Initialised the cluster in {data}" in s.init_result.stdout
    assert "KMS root key:       created and sealed (seal passphrase)" in s.init_result.stdout
    for role in ROLES:
        names, usages = san_dns(data / "roles" / f"{role}.pem")
        assert names == [f"{role}.cloister.internal"]
        assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert stat.S_IMODE((data / "roles" / f"{role}.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "admin.token").stat().st_mode) == 0o600
    assert json.loads((data / "kms" / "root.json").read_text())["mode"] == "passphrase"
    assert json.loads((data / "initialized").read_text())["seal"] == "passphrase"
    # a seal other than the one the root key was sealed with is named
    other = s.config_path.parent / "other-seal.yaml"
    doc = yaml.safe_load(s.config_path.read_text())
    doc["kms"] = {"seal": {"mode": "dev"}}
    other.write_text(yaml.safe_dump(doc, sort_keys=False))
    p = cloisterd("--config", str(other), "--check")
    assert p.returncode == 1 and f"kms.seal: the root key in {data}/kms/root.json is sealed with mode passphrase, " \
        "not dev" in p.stderr, p.stderr
    again = cloisterd("--init", "--config", str(s.config_path))
    assert again.returncode == 1
    assert f"{data} is initialised already ({data}/initialized exists); --init prepares a new cluster only once" \
        in again.stderr, again.stderr


def test_the_started_cluster_serves_the_quickstart(initialised, tmp_path):
    s = initialised
    # the KMS unsealed itself from the passphrase file: ready at once
    r = requests.get(s.url + "/readyz", verify=s.ca)
    assert r.status_code == 200 and r.json()["seal"] == {"mode": "passphrase", "sealed": False}, r.text
    wiki_port = free_port()
    wiki = subprocess.Popen([sys.executable, "-m", "http.server", str(wiki_port), "--bind", "127.0.0.1",
                             "--directory", str(ROOT / "examples" / "wiki")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        docs = list(yaml.safe_load_all((ROOT / "examples" / "quickstart.yaml").read_text()))
        for d in docs:
            if d["kind"] == "Service":
                d["spec"]["upstream"]["url"] = f"http://127.0.0.1:{wiki_port}"
        manifest = tmp_path / "quickstart.yaml"
        manifest.write_text(yaml.safe_dump_all(docs))
        home = tmp_path / "config"
        p = run_cli(s, "login", "--token", "-", input=s.token, config_home=home)
        assert p.returncode == 0, p.stderr
        p = run_cli(s, "apply", "-f", str(manifest), config_home=home)
        assert p.returncode == 0 and "service/wiki created" in p.stdout, p.stdout + p.stderr
        p = run_cli(s, "get", "users", config_home=home)
        assert p.returncode == 0 and "alice" in p.stdout, p.stderr
        p = run_cli(s, "token", "create", "alice-cli", "-o", "json", config_home=home)
        assert p.returncode == 0, p.stderr
        access = requests.post(s.url + "/v1/auth/token", json={"token": json.loads(p.stdout)["token"]},
                               verify=s.ca).json()["access_token"]
        proxy = s.extra_args[s.extra_args.index("--proxy-listen") + 1]
        headers = {"Host": "wiki.localhost", "Authorization": f"Bearer {access}"}
        deadline = time.time() + 30
        while (code := requests.get(f"https://{proxy}/", headers=headers, verify=s.ca).status_code) != 200:
            assert time.time() < deadline, code  # the proxy gets the quickstart from the API's stream
            time.sleep(0.1)
        assert requests.get(f"https://{proxy}/admin/", headers=headers, verify=s.ca).status_code == 403
        # the proxy's probes answer on an address; a service's own /readyz stays its upstream's
        for probe in ("/healthz", "/readyz"):
            r = requests.get(f"https://{proxy}{probe}", verify=s.ca)
            assert r.status_code == 200 and r.json() == {"status": "ok", "problems": []}, r.text
        r = requests.get(f"https://{proxy}/readyz", headers=headers, verify=s.ca)
        assert r.status_code == 404 and "status" not in r.text, r.text  # http.server: no such file
    finally:
        wiki.terminate()
        wiki.wait()


def test_status_shows_roles_seal_store_and_replicas(initialised, tmp_path):
    s = initialised
    p = run_cli(s, "status", config_home=tmp_path / "config")
    assert p.returncode == 0, p.stderr
    assert re.search(r"^status\s+ready$", p.stdout, re.M), p.stdout
    for role in ROLES:
        assert re.search(rf"^  {role}\s+ready\s+1 replica$", p.stdout, re.M), p.stdout
    assert re.search(r"^seal\s+passphrase \(unsealed\)$", p.stdout, re.M), p.stdout
    assert re.search(r"^store\s+sqlite \(reachable\)$", p.stdout, re.M), p.stdout
    assert re.search(r"^audit\s+reachable$", p.stdout, re.M), p.stdout
    p = run_cli(s, "status", "-o", "json", config_home=tmp_path / "config")
    assert p.returncode == 0 and json.loads(p.stdout)["replicas"] == dict.fromkeys(ROLES, 1), p.stdout


def test_telemetry_otlp_of_the_file_feeds_the_exporter(tmp_path):
    """telemetry.otlp {endpoint, headers} reaches the roles' OTLP exporter
    as the OTEL_* variables would: an API call's span arrives at the
    collector, every request with the configured header."""
    with Receiver() as rx:
        path = write_config(tmp_path, telemetry={"otlp": {"endpoint": rx.url, "headers": {"x-tenant": "t1"}}})
        assert cloisterd("--init", "--config", str(path)).returncode == 0
        # quick batching only; the endpoint and headers come from the file
        s = Server(tmp_path / "data", config=path, env_extra={"OTEL_BSP_SCHEDULE_DELAY": "200"}).start()
        try:
            assert s.request("GET", "/v1/whoami").status_code == 200
            rx.wait_for(lambda: rx.find_span(service="cloisterd-api", name="GET /v1/whoami"), timeout=30)
            assert all(r.headers.get("x-tenant") == "t1" for r in rx.requests_to("/v1/traces")), rx.records
        finally:
            s.stop()
        assert rx.problems == []


def test_readyz_names_the_seal_until_cloisterd_unseal(tmp_path):
    """kms.seal {mode: passphrase}: --init seals the root key with the
    passphrase given on --passphrase-fd; the KMS starts sealed and only that
    passphrase unseals it."""
    path = write_config(tmp_path, seal={"mode": "passphrase"})
    init = cloisterd("--init", "--config", str(path), "--passphrase-fd", "0", input=PASSPHRASE + "\n")
    assert init.returncode == 0, init.stderr
    assert "KMS root key:       created and sealed (seal passphrase)" in init.stdout
    s = Server(tmp_path / "data", config=path).start()
    try:
        r = requests.get(s.url + "/readyz", verify=s.ca)
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["problems"] == ["kms: sealed (seal passphrase); run cloisterd unseal"], body
        assert body["seal"] == {"mode": "passphrase", "sealed": True} and body["roles"]["kms"] == "sealed", body
        assert requests.get(s.url + "/healthz", verify=s.ca).status_code == 200  # live all the same
        p = run_cli(s, "status")
        assert p.returncode == 1 and re.search(r"^seal\s+passphrase \(sealed: run cloisterd unseal\)$", p.stdout,
                                               re.M), p.stdout
        assert "kms: sealed (seal passphrase); run cloisterd unseal" in p.stdout
        u = cloisterd("unseal", "--data-dir", str(s.data_dir), "--passphrase-fd", "0", input="not the passphrase")
        assert u.returncode == 1 and "wrong passphrase" in u.stderr, u.stderr
        assert requests.get(s.url + "/readyz", verify=s.ca).status_code == 503
        u = cloisterd("unseal", "--data-dir", str(s.data_dir), "--passphrase-fd", "0", input=PASSPHRASE)
        assert u.returncode == 0, u.stderr
        r = requests.get(s.url + "/readyz", verify=s.ca)
        assert r.status_code == 200 and r.json()["problems"] == [], r.text
        assert run_cli(s, "status").returncode == 0
    finally:
        s.stop()


def test_init_without_a_passphrase_at_hand(tmp_path):
    """No file, no --passphrase-fd, no terminal: the first unseal creates
    the root key. A passphrase too short is refused before anything is
    written."""
    path = write_config(tmp_path, seal={"mode": "passphrase"})
    short = cloisterd("--init", "--config", str(path), "--passphrase-fd", "0", input="short\n")
    assert short.returncode == 1 and "the KMS passphrase needs at least 8 characters" in short.stderr, short.stderr
    assert not (tmp_path / "data").exists()
    init = cloisterd("--init", "--config", str(path))
    assert init.returncode == 0, init.stderr
    assert "KMS root key:       created at the first `cloisterd unseal` (seal passphrase)" in init.stdout
    assert not (tmp_path / "data" / "kms" / "root.json").exists()


def test_a_listener_serves_its_own_certificate(tmp_path):
    """api.tls and proxy.tls {cert, key}: the operator's pair, not one the
    cluster CA issues; the proxy and the runner still reach the API."""
    key, cert = tmp_path / "own.key", tmp_path / "own.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=own.example",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    path = write_config(tmp_path, api={"listen": "127.0.0.1:7443", "tls": {"cert": str(cert), "key": str(key)}},
                        proxy={"listen": "127.0.0.1:8443", "tls": {"cert": str(cert), "key": str(key)}})
    assert cloisterd("--init", "--config", str(path)).returncode == 0
    s = Server(tmp_path / "data", config=path)
    s.start(wait=False)
    try:
        deadline = time.time() + 30
        while True:  # verified against the operator's certificate, not ca.pem
            try:
                r = requests.get(s.url + "/readyz", verify=str(cert), timeout=2)
                if r.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.time() < deadline and s.proc.poll() is None, s.read_log()[-3000:]
            time.sleep(0.1)
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(s.url + "/readyz", verify=s.ca, timeout=5)
        # the proxy's default certificate too (its probe, dialled at an address)
        proxy = s.extra_args[s.extra_args.index("--proxy-listen") + 1]
        assert requests.get(f"https://{proxy}/readyz", verify=str(cert), timeout=5).status_code == 200
    finally:
        s.stop()


def test_the_documented_walkthrough_runs(tmp_path):
    """docs/deployment.md "A cluster from a file, step by step", as written
    (on free ports)."""
    doc = (ROOT / "docs" / "deployment.md").read_text()
    script = doc.split("<!-- test: config-quickstart -->\n```sh\n", 1)[1].split("\n```", 1)[0]
    script = script.replace("127.0.0.1:7443", f"127.0.0.1:{free_port()}").replace(
        "127.0.0.1:8443", f"127.0.0.1:{free_port()}")
    env = sanitizer_env()
    for name in ("CLOISTER_TOKEN", "CLOISTER_SERVER", "CLOISTER_CA"):
        env.pop(name, None)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["PATH"] = f"{CLOISTERD.parent}:{CLOISTER.parent}:{env['PATH']}"
    p = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(timeout=300)
    finally:
        try:
            os.killpg(p.pid, 9)  # the script's cloisterd, were it left running by a failed step
        except ProcessLookupError:
            pass
    log = (tmp_path / "cloisterd.log").read_text(errors="replace") if (tmp_path / "cloisterd.log").exists() else ""
    assert p.returncode == 0, out + err + log[-3000:]
    assert "cloisterd.yaml: the configuration is valid" in out
    assert "Initialised the cluster in" in out
    assert re.search(r"^devs\b", out, re.M), out
    assert re.search(r"^status\s+ready$", out, re.M), out
    assert '{"status":"ok","problems":[]}' in out
    for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
        assert marker not in log, log[-3000:]


def test_readyz_follows_a_postgresql_store(tmp_path, pg_database):
    """store.url postgresql://…: /readyz says the driver, turns 503 naming
    the store while the database is down (the API stays live), and 200
    again once it is back."""
    path = write_config(tmp_path, store={"url": pg_database})
    assert cloisterd("--init", "--config", str(path)).returncode == 0
    s = Server(tmp_path / "data", config=path).start()
    try:
        r = requests.get(s.url + "/readyz", verify=s.ca)
        assert r.status_code == 200 and r.json()["store"] == {"driver": "postgres", "reachable": True}, r.text
        pg_ctl(pg_database, "stop")
        try:
            def unready():
                r = requests.get(s.url + "/readyz", verify=s.ca, timeout=30)
                return r.json() if r.status_code == 503 else None
            deadline = time.time() + 60
            while not (body := unready()):
                assert time.time() < deadline
                time.sleep(0.2)
            assert body["store"] == {"driver": "postgres", "reachable": False}, body
            assert [p for p in body["problems"] if p.startswith("store: unreachable (")], body
            assert requests.get(s.url + "/healthz", verify=s.ca, timeout=30).status_code == 200
        finally:
            pg_ctl(pg_database, "start")
        deadline = time.time() + 60
        while requests.get(s.url + "/readyz", verify=s.ca, timeout=30).status_code != 200:
            assert time.time() < deadline
            time.sleep(0.2)
    finally:
        s.stop()


def test_readyz_names_an_audit_log_the_api_cannot_reach(server):
    """The audit role stopped (SIGSTOP): the API's next audit event is not
    delivered, /readyz turns 503 naming the audit log; once the role runs
    again the retried delivery goes through and /readyz is 200."""
    s = server
    audit = s.role_pid("audit")
    os.kill(audit, signal.SIGSTOP)
    try:
        group = {"apiVersion": "cloister.dev/v1", "kind": "Group", "metadata": {"name": "audited"}, "spec": {}}
        assert s.request("POST", "/v1/groups", json=group).status_code == 201  # its audit entry waits
        deadline = time.time() + 60
        while (r := requests.get(s.url + "/readyz", verify=s.ca, timeout=30)).status_code != 503:
            assert time.time() < deadline, r.text  # a delivery gives up after 10 s
            time.sleep(0.2)
        body = r.json()
        assert body["audit"] == {"reachable": False}, body
        assert "audit: events do not reach the audit log (the last delivery failed or the queue is full)" \
            in body["problems"], body
    finally:
        os.kill(audit, signal.SIGCONT)
    deadline = time.time() + 60
    while (r := requests.get(s.url + "/readyz", verify=s.ca, timeout=30)).status_code != 200:
        assert time.time() < deadline, r.text
        time.sleep(0.2)
    assert r.json()["audit"] == {"reachable": True}


def test_pki_dir_elsewhere_holds_the_ca_and_the_role_certificates(tmp_path):
    pki = tmp_path / "pki"
    path = write_config(tmp_path, pki={"dir": str(pki)})
    init = cloisterd("--init", "--config", str(path))
    assert init.returncode == 0, init.stderr
    assert f"cluster CA:         {pki}/ca.pem" in init.stdout
    assert not (tmp_path / "data" / "ca.pem").exists()
    assert stat.S_IMODE(pki.stat().st_mode) == 0o711
    for role in ROLES:
        assert san_dns(pki / "roles" / f"{role}.pem")[0] == [f"{role}.cloister.internal"]
    s = Server(tmp_path / "data", config=path)
    s.start(wait=False)
    try:
        deadline = time.time() + 60
        while True:  # every role, the proxy and runner reading ca.pem in pki.dir, ready
            try:
                if requests.get(s.url + "/readyz", verify=str(pki / "ca.pem"), timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.time() < deadline and s.proc.poll() is None, s.read_log()[-3000:]
            time.sleep(0.1)
    finally:
        s.stop()
