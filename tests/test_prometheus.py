"""A real Prometheus (Debian's `prometheus`, started here on a free loopback
port with its own data dir) scrapes cloisterd's /metrics with a scrape
credential (a workload user allowed only `get` on Metrics, its token in a
credentials file) and evaluates deploy/prometheus/rules.yml; `promtool check
metrics` is clean on the real output; the rules' unit tests pass; every
PromQL expression of the Grafana dashboard (deploy/grafana/cloister.json)
evaluates without error, and the key ones return data after proxied traffic
and an Enclave whose workload keeps crashing. Role restarts are counted, and
the KMS's counters survive them."""
import base64
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import requests

from conftest import ROOT, free_port, manifest, wait_for
from proxied import Proxied

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULE_TESTS = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.yml"))
DASHBOARD = ROOT / "deploy" / "grafana" / "cloister.json"



@pytest.fixture(autouse=True)
def _prometheus_installed():
    assert os.access(PROMETHEUS, os.X_OK) and os.access(PROMTOOL, os.X_OK), \
        "Debian's prometheus package is not installed: run scripts/setup.sh"

# Grafana's variables, as the dashboard's user would have them: every Service, a rate window
# longer than this test (every series keeps the traffic's increase until the end)
GRAFANA_VARS = {"$__rate_interval": "10m", "$service": ".*"}


class Prometheus:
    """A Prometheus on 127.0.0.1 scraping the daemon every second."""

    def __init__(self, workdir, server, token):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        token_file = self.dir / "cloister-scrape.token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        target = server.url.removeprefix("https://")
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                # as docs/api.md shows it
                {"job_name": "cloister", "scheme": "https", "tls_config": {"ca_file": server.ca},
                 "authorization": {"credentials_file": str(token_file)},
                 "static_configs": [{"targets": [target]}]},
                # without the credential: refused
                {"job_name": "cloister-anonymous", "scheme": "https", "tls_config": {"ca_file": server.ca},
                 "static_configs": [{"targets": [target]}]},
            ],
        }
        (self.dir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        check = subprocess.run([PROMTOOL, "check", "config", str(self.dir / "prometheus.yml")], capture_output=True,
                               text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(self.dir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.dir / 'prometheus.yml'}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=self.log, start_new_session=True)

    def api(self, path, **params):
        r = requests.get(self.url + path, params=params, timeout=10)
        return r.json()

    def query(self, expr):
        """The instant query's answer ({status, data: {resultType, result}} or {status: error, error})."""
        return self.api("/api/v1/query", query=expr)

    def targets(self):
        try:
            return {t["scrapePool"]: t for t in self.api("/api/v1/targets")["data"]["activeTargets"]}
        except (requests.ConnectionError, KeyError, ValueError):
            assert self.proc.poll() is None, f"prometheus exited:\n{self.read_log()}"
            return {}

    def read_log(self):
        return (self.dir / "prometheus.log").read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("prometheus")
    g = Proxied(base / "data")
    prom = None
    try:
        g.apply(
            manifest("Policy", "metrics-scrape", {"rules": [
                {"effect": "allow", "priority": 0,
                 "condition": {"match": 'ctx.request.api.verb == "get" && ctx.request.api.kind == "Metrics"'}}]}),
            manifest("User", "prometheus", {"type": "workload", "policies": ["metrics-scrape"]}),
            manifest("Credential", "prometheus-scrape", {"user": "prometheus", "type": "authToken"}),
        )
        token = g.s.request("POST", "/v1/tokens", json={"credential": "prometheus-scrape"}).json()["token"]
        prom = Prometheus(base / "prom", g.s, token)
        yield g, prom, token
    finally:
        if prom:
            prom.stop()
        g.stop()


def dashboard_exprs():
    """Every PromQL expression of the dashboard (panel targets, nested rows'
    too) with Grafana's variables replaced, and the metric of each
    label_values() template query."""
    d = json.loads(DASHBOARD.read_text())
    out = []

    def walk(panels):
        for p in panels:
            out.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(d["panels"])
    for v in d["templating"]["list"]:
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else None
        if q:
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q)
            assert m, f"template query {q!r} is not label_values(metric, label)"
            out.append(m.group(1))
    exprs = []
    for e in out:
        for k, v in GRAFANA_VARS.items():
            e = e.replace(k, v)
        assert "$" not in e, f"an unknown Grafana variable in {e!r}"
        exprs.append(e)
    return exprs


def test_prometheus_scrapes_with_the_scrape_credential(stack):
    g, prom, token = stack
    targets = wait_for(lambda: (t := prom.targets()) and t.get("cloister", {}).get("health") == "up"
                       and t.get("cloister-anonymous", {}).get("health") == "down" and t,
                       60, "the scrape to succeed with the credential and fail without")
    assert "401" in targets["cloister-anonymous"]["lastError"], targets["cloister-anonymous"]
    res = prom.query('up{job="cloister"}')["data"]["result"]
    assert [r["value"][1] for r in res] == ["1"]
    # the credential reads metrics and nothing else
    assert g.s.request("GET", "/metrics", token=token).status_code == 200
    assert g.s.request("GET", "/v1/users", token=token).status_code == 403


def test_promtool_check_metrics_is_clean_on_the_real_output(stack):
    g, prom, token = stack
    g.get("/docs/x", g.alice)
    g.get("/admin/x", g.alice)
    text = g.s.request("GET", "/metrics", token=token).text
    for family in ("cloister_proxy_request_duration_seconds_bucket{service=\"wiki\"", "cloister_proxy_errors_total{",
                   "cloister_kms_sealed 0", "cloister_kms_operations_total{", "cloister_audit_entries_appended_total ",
                   "cloister_role_ready{role=\"proxy\"} 1", "# TYPE cloister_enclave_replicas_ready gauge"):
        assert family in text, family
    r = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "" and r.stderr.strip() == "", r.stdout + r.stderr


def test_rules_check_and_their_unit_tests_pass():
    r = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert RULE_TESTS
    r = subprocess.run([PROMTOOL, "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def test_every_dashboard_expression_evaluates_and_the_key_ones_have_data(stack, tmp_path):
    g, prom, token = stack
    wait_for(lambda: prom.targets().get("cloister", {}).get("health") == "up", 60, "the scrape")
    # an Enclave whose workload exits at once: restarted, then crash looping
    bundle = tmp_path / "crashy"
    bundle.mkdir()
    (bundle / "enclave.yaml").write_text('command: ["/usr/bin/python3", "-c", "raise SystemExit(3)"]\nport: 8080\n')
    os.chmod(tmp_path, 0o755)
    os.chmod(bundle, 0o755)
    g.apply(manifest("Enclave", "crashy", {"bundle": str(bundle), "limits": {"memoryMiB": 64}}))
    # proxied traffic: allowed, denied, unauthenticated, upstream errors
    for i in range(20):
        assert g.get(f"/docs/{i}", g.alice).status_code == 200
    for i in range(5):
        assert g.get(f"/admin/{i}", g.alice).status_code == 403
        assert g.get(f"/docs/{i}", g.bob).status_code == 403
        assert g.get(f"/docs/{i}").status_code == 401
    assert g.get("/status/502", g.alice).status_code == 502
    assert g.get("/status/504", g.alice).status_code == 504
    # KMS operations: an encryption, and a decryption under the wrong context (refused by the KMS)
    assert g.s.request("POST", "/v1/keys", json=manifest("Key", "metrics-key", {"purpose": "encrypt"})).status_code == 201
    enc = g.s.request("POST", "/v1/kms/encrypt", json={"key": "metrics-key", "plaintext": base64.b64encode(b"x").decode(),
                                                       "context": {"app": "a"}})
    assert enc.status_code == 200, enc.text
    dec = g.s.request("POST", "/v1/kms/decrypt", json={"ciphertext": enc.json()["ciphertext"], "context": {"app": "b"}})
    assert 400 <= dec.status_code < 500, dec.text

    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    for e in exprs:
        ans = prom.query(e)
        assert ans["status"] == "success", f"{e}: {ans}"

    def values(expr):
        ans = prom.query(expr)
        assert ans["status"] == "success", f"{expr}: {ans}"
        return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1]) for r in ans["data"]["result"]}

    # the dashboard's key expressions (and the recorded series they use) return what the traffic made
    key = {
        'sum by (decision) (rate(cloister_proxy_requests_total{service=~".*"}[10m]))':
            lambda v: {json.loads(k)["decision"] for k, x in v.items() if x > 0} >= {"allow", "deny",
                                                                                   "unauthenticated"},
        'sum by (class) (rate(cloister_proxy_errors_total{service=~".*"}[10m]))':
            lambda v: v.get('{"class": "bad_gateway"}', 0) > 0 and v.get('{"class": "timeout"}', 0) > 0,
        'cloister:proxy_error_ratio:rate5m{service=~".*"}':
            lambda v: 0 < v.get('{"__name__": "cloister:proxy_error_ratio:rate5m", "service": "wiki"}', 0) < 1,
        'histogram_quantile(0.99, sum by (le) (rate(cloister_proxy_request_duration_seconds_bucket{service=~".*"}[10m])))':
            lambda v: len(v) == 1 and 0 < next(iter(v.values())) < 30,
        'cloister:proxy_request_duration_seconds:p99_5m{service=~".*"}':
            lambda v: any("wiki" in k and x > 0 for k, x in v.items()),
        "max(cloister_kms_sealed)": lambda v: list(v.values()) == [0],
        "sum by (operation, outcome) (rate(cloister_kms_operations_total[10m]))":
            lambda v: v.get('{"operation": "encrypt", "outcome": "success"}', 0) > 0
            and v.get('{"operation": "decrypt", "outcome": "refused"}', 0) > 0,
        "sum(rate(cloister_audit_entries_appended_total[10m]))": lambda v: list(v.values())[0] > 0,
        "sum(cloister:audit_events_dropped:increase5m)": lambda v: list(v.values()) == [0],
        "min by (role) (cloister_role_ready)":
            lambda v: {json.loads(k)["role"] for k, x in v.items() if x == 1} >= {"api", "proxy", "kms", "audit"},
        "sum by (route) (rate(cloister_api_requests_total[10m]))": lambda v: any(x > 0 for x in v.values()),
        "sum by (outcome) (rate(cloister_webhook_deliveries_total[10m]))":
            lambda v: {json.loads(k)["outcome"] for k in v} >= {"ok", "failed"},
        "sum by (enclave) (cloister_enclave_replicas_desired)": lambda v: v.get('{"enclave": "crashy"}') == 1,
        "sum by (enclave) (increase(cloister_enclave_restarts_total[15m]))":
            lambda v: v.get('{"enclave": "crashy"}', 0) > 0,
        "sum by (enclave) (cloister_enclave_replicas_crash_looping)": lambda v: v.get('{"enclave": "crashy"}') == 1,
        "max by (enclave) (cloister_enclave_memory_limit_bytes)":
            lambda v: v.get('{"enclave": "crashy"}') == 64 * 1024 * 1024,
    }
    for expr, ok in key.items():
        assert expr in exprs, f"{expr} is not on the dashboard"
        last = []
        try:
            wait_for(lambda: last.append(values(expr)) or (last[-1] and ok(last[-1])), 60,
                     f"{expr} to show the traffic")
        except AssertionError as e:
            raise AssertionError(f"{e}; last answer: {last[-1]}") from None
    # the crash loop is visible to the alert rule (pending: it fires after 5 minutes)
    wait_for(lambda: any(a["labels"]["alertname"] == "CloisterEnclaveCrashLooping" and a["labels"].get("enclave") == "crashy"
                         for a in prom.api("/api/v1/alerts")["data"]["alerts"]), 30, "the crash-loop alert to be pending")
    g.s.request("DELETE", "/v1/enclaves/crashy")


def metric(server, line_start):
    """The value of the sample whose line starts with LINE_START on /metrics (the admin's token), or None."""
    for line in server.request("GET", "/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return None


def test_role_restarts_are_counted_and_kms_counters_survive_them(server):
    """A role killed with SIGKILL is restarted by the supervisor and counted;
    what the KMS counted before lives in the role table and is kept."""
    assert server.request("POST", "/v1/keys", json=manifest("Key", "k", {"purpose": "encrypt"})).status_code == 201
    enc = server.request("POST", "/v1/kms/encrypt", json={"key": "k", "plaintext": base64.b64encode(b"x").decode()})
    assert enc.status_code == 200, enc.text
    ops = 'cloister_kms_operations_total{operation="encrypt",outcome="success"}'
    assert metric(server, ops) == 1
    assert metric(server, 'cloister_role_restarts_total{role="kms"}') == 0
    os.kill(server.role_pid("kms"), signal.SIGKILL)
    wait_for(lambda: metric(server, 'cloister_role_restarts_total{role="kms"}') == 1, 30, "the restart to be counted")
    server.wait_healthy()
    assert metric(server, 'cloister_role_ready{role="kms"}') == 1 and metric(server, "cloister_kms_sealed") == 0
    assert metric(server, ops) == 1
    assert metric(server, 'cloister_role_restarts_total{role="api"}') == 0
