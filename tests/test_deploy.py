"""Install and deploy (docs/deployment.md). `meson install` into a
temporary DESTDIR puts cloisterd, cloister, cloister-agent and the job
engine's bundle in the prefix's bin, with the systemd unit and the roles'
sysusers. The installed cloisterd --dev, confined as the unit confines it
(started as root: its capability bounding set, no_new_privs, its /proc and
/dev), serves the quickstart, hands the runner the installed agent and
engine, and launches an agent-mode sandbox; the unit's own commands (--check,
--init, the start with the passphrase as LoadCredential= leaves it) work
the same. The unit passes `systemd-analyze verify`; its exposure is measured
offline. deploy/kubernetes renders with `kubectl kustomize`; every object
validates against the Kubernetes schemas (tests/k8s: npm kubernetes-models,
unknown fields included) and our rules, and each role's configuration passes
`cloisterd --check` but for what this release cannot do yet."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from conftest import BUILD, ROOT, Server, free_port, sanitizer_env
from test_agent import make_bundle
from test_runner import launch, wait_for

PREFIX = "/usr/local"
UNIT = f"{PREFIX}/lib/systemd/system/cloisterd.service"
SYSUSERS = f"{PREFIX}/lib/sysusers.d/cloister.conf"
ROLES = ("api", "proxy", "kms", "audit", "runner")


@pytest.fixture(scope="module")
def destdir(tmp_path_factory):
    """The build installed into a temporary DESTDIR (nothing rebuilt: the
    build dir may be shared); every file meson plans to install is there."""
    dest = tmp_path_factory.mktemp("install")
    r = subprocess.run(["meson", "install", "-C", str(BUILD), "--no-rebuild", "--quiet", "--destdir", str(dest)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    plan = installed_plan()
    assert plan, "meson plans to install nothing"
    for target in plan:
        assert (dest / target.lstrip("/")).exists(), f"{target} not installed"
    return dest


def installed_plan():
    """Where meson installs each file or folder of the build (destinations)."""
    return list(json.loads(subprocess.run(["meson", "introspect", "--installed", str(BUILD)], capture_output=True,
                                          text=True, check=True, timeout=60).stdout).values())


def bindir(destdir):
    return destdir / PREFIX.lstrip("/") / "bin"


def unit_setting(text, key):
    """The last value of KEY= in the unit TEXT (systemd's rule for one-value keys)."""
    values = re.findall(rf"^{key}=(.*)$", text, re.M)
    assert values, f"{key}= missing from the unit"
    return values[-1].strip()


def test_meson_install_puts_the_binaries_in_the_prefix_bin(destdir):
    bin_dir = bindir(destdir)
    for name in ("cloisterd", "cloister", "cloister-agent"):
        assert os.access(bin_dir / name, os.X_OK), f"{name} not installed in {bin_dir}"
    # the job engine's measured bundle, when this build makes one, sits beside them
    if any("cloister-job-bundle" in t for t in installed_plan()):
        bundle = bin_dir / "cloister-job-bundle"
        assert (bundle / "enclave.yaml").is_file() and os.access(bundle / "cloister-job", os.X_OK)
    r = subprocess.run([str(bin_dir / "cloister"), "--version"], capture_output=True, text=True, env=sanitizer_env(),
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    # the unit names the installed daemon
    unit = (destdir / UNIT.lstrip("/")).read_text()
    assert unit_setting(unit, "ExecStart").split()[0] == f"{PREFIX}/bin/cloisterd"


@pytest.fixture(scope="module")
def installed_server(destdir, tmp_path_factory):
    """The installed cloisterd --dev. Started as root, it runs confined as
    the unit confines it (unit_confinement)."""
    prefix = unit_confinement(destdir)
    # cloisterd must find the installed agent and engine by itself
    saved = {k: os.environ.pop(k) for k in ("CLOISTER_AGENT", "CLOISTER_JOB_BUNDLE") if k in os.environ}
    data = tmp_path_factory.mktemp("installed") / "data"
    s = Server(data, prefix=prefix, binary=bindir(destdir) / "cloisterd")
    try:
        s.start()
        yield s
        s.stop()
    finally:
        os.environ.update(saved)
        if s.proc is not None:
            s.kill9()


def installed_cli(destdir, server, *args, config_home):
    env = sanitizer_env()
    env.update(XDG_CONFIG_HOME=str(config_home), CLOISTER_SERVER=server.url, CLOISTER_CA=server.ca)
    env.pop("CLOISTER_TOKEN", None)
    return subprocess.run([str(bindir(destdir) / "cloister"), *args], capture_output=True,
                          text=True, env=env, timeout=60)


def test_the_installed_daemon_serves_the_quickstart(destdir, installed_server, tmp_path):
    s = installed_server
    if os.geteuid() == 0:  # the unit's confinement held: the supervisor has only its bounding set
        status = Path(f"/proc/{s.proc.pid}/status").read_text()
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), status
        assert int(re.search(r"^CapBnd:\s+(\w+)$", status, re.M)[1], 16) < (1 << 21)  # no CAP_SYS_ADMIN (21) or above
    wiki_port = free_port()
    wiki = subprocess.Popen([sys.executable, "-m", "http.server", str(wiki_port), "--bind", "127.0.0.1", "--directory",
                             str(ROOT / "examples" / "wiki")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        config = tmp_path / "config"
        r = installed_cli(destdir, s, "login", "--token", s.token, config_home=config)
        assert r.returncode == 0, r.stderr
        quickstart = (ROOT / "examples" / "quickstart.yaml").read_text()
        (tmp_path / "quickstart.yaml").write_text(quickstart.replace("127.0.0.1:9000", f"127.0.0.1:{wiki_port}"))
        r = installed_cli(destdir, s, "apply", "-f", str(tmp_path / "quickstart.yaml"), config_home=config)
        assert r.returncode == 0 and "service/wiki created" in r.stdout, r.stdout + r.stderr
        r = installed_cli(destdir, s, "token", "create", "alice-cli", "-o", "json", config_home=config)
        assert r.returncode == 0, r.stderr
        access = requests.post(s.url + "/v1/auth/token", json={"token": json.loads(r.stdout)["token"]}, verify=s.ca,
                               timeout=30).json()["access_token"]
        proxy = next(a for a in s.extra_args if a.startswith("127.0.0.1:"))

        def through_proxy(path):
            return requests.get(f"https://{proxy}{path}", verify=s.ca, timeout=10,
                                headers={"Host": "wiki.localhost", "Authorization": f"Bearer {access}"}).status_code
        # the proxy receives the quickstart from the API's stream
        assert wait_for(lambda: through_proxy("/") == 200, what="alice reaching the wiki through the proxy")
        assert through_proxy("/admin/") == 403
    finally:
        wiki.terminate()
        wiki.wait(timeout=30)


def test_the_installed_runner_launches_sandboxes_with_the_installed_agent(destdir, installed_server, tmp_path):
    s = installed_server
    agent = bindir(destdir) / "cloister-agent"
    # the supervisor copied the installed agent (found beside it) into the runner's room
    assert (s.data_dir / "runner" / "cloister-agent").read_bytes() == agent.read_bytes()
    assert "no cloister-agent next to cloisterd" not in s.read_log()
    # the job engine's bundle too, when the build installs one: the runner's copy is the installed one,
    # and the engine the api role puts in every job digest is its measurement
    engine = bindir(destdir) / "cloister-job-bundle"
    if any("cloister-job-bundle" in t for t in installed_plan()):
        copy = s.data_dir / "runner" / "job-engine"
        assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in engine.iterdir())
        assert all((copy / p.name).read_bytes() == p.read_bytes() for p in engine.iterdir())
        r = installed_cli(destdir, s, "enclave", "measure", str(engine), config_home=tmp_path / "config")
        assert r.returncode == 0, r.stderr
        assert s.request("GET", "/v1/jobs/engine").json()["pcr0"] == r.stdout.strip()
    bundle = make_bundle(tmp_path / "bundle")
    launched, _ = launch(s, "installed", bundle)
    # PCR3 measures the agent the runner bound into the sandbox: the installed one
    assert launched["pcrs"]["3"] == hashlib.sha384(agent.read_bytes()).hexdigest()
    assert s.request("DELETE", "/v1/enclaves/installed").status_code == 200


def unit_confinement(destdir):
    """The command prefix that gives a process (as root) what the unit gives
    cloisterd, read from the unit: only its CapabilityBoundingSet,
    no_new_privs, a /proc showing only its own processes and no system files
    (ProtectProc=invisible, ProcSubset=pid), a /dev of null, zero, full,
    random and urandom (PrivateDevices=yes), in a mount namespace of its own."""
    if os.geteuid() != 0:
        return []
    unit = (destdir / UNIT.lstrip("/")).read_text()
    caps = unit_setting(unit, "CapabilityBoundingSet").split()
    assert [unit_setting(unit, k) for k in ("NoNewPrivileges", "ProtectProc", "ProcSubset", "PrivateDevices")] == \
        ["yes", "invisible", "pid", "yes"]
    bounding = ",".join(["-all"] + ["+" + c.removeprefix("CAP_").lower() for c in caps])
    devices = " && ".join(f"mknod -m 666 /dev/{name} c 1 {minor}"
                          for name, minor in (("null", 3), ("zero", 5), ("full", 7), ("random", 8), ("urandom", 9)))
    mounts = "mount -t proc -o hidepid=invisible,subset=pid proc /proc && mount -t tmpfs -o mode=755,nosuid tmpfs /dev"
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{mounts} && {devices} && exec "$@"', "sh",
            "setpriv", "--no-new-privs", "--bounding-set", bounding, "--inh-caps", "-all", "--"]


def test_the_units_commands_check_init_and_unseal_from_the_credential(destdir, tmp_path):
    """What the unit runs, in its order: ExecStartPre's --check, then
    ExecStart, the KMS passphrase in a root-only 0400 file as systemd's
    LoadCredential= leaves it (read by the supervisor before the kms role
    drops); --init prepared the cluster once before, by hand."""
    from test_config import write_config
    unit = (destdir / UNIT.lstrip("/")).read_text()
    assert unit_setting(unit, "ExecStartPre").endswith("--config /etc/cloister/cloisterd.yaml --check")
    assert unit_setting(unit, "LoadCredential") == "unseal:/etc/cloister/credentials/unseal"
    path = write_config(tmp_path)
    (tmp_path / "unseal").chmod(0o400)
    cloisterd = str(bindir(destdir) / "cloisterd")
    for args in (["--check"], ["--init"]):
        r = subprocess.run([*unit_confinement(destdir), cloisterd, "--config", str(path), *args], capture_output=True,
                           text=True, env=sanitizer_env(), timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
    s = Server(tmp_path / "data", prefix=unit_confinement(destdir), binary=cloisterd, config=path)
    try:
        s.start()
        r = requests.get(s.url + "/readyz", verify=s.ca, timeout=30)
        assert r.status_code == 200 and r.json()["seal"] == {"mode": "passphrase", "sealed": False}, r.text
    finally:
        s.stop()


@pytest.fixture(scope="module")
def unit_root(destdir):
    """DESTDIR as a root systemd-analyze can load the installed unit in: the
    host's targets (sysinit.target, multi-user.target, ...) it depends on."""
    units = destdir / "usr" / "lib" / "systemd" / "system"
    units.mkdir(parents=True, exist_ok=True)
    for target in Path("/lib/systemd/system").glob("*.target"):
        shutil.copy(target, units / target.name)
    return destdir


def test_systemd_analyze_verify_accepts_the_unit(unit_root):
    r = subprocess.run(["systemd-analyze", "verify", "--root", str(unit_root), UNIT], capture_output=True, text=True,
                       timeout=120)
    # verify warns (unknown keys, bad values) on stderr and still exits 0: both must be clean
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stdout + r.stderr


def test_the_units_exposure_is_measured_offline(unit_root):
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", "--root", str(unit_root), UNIT],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    exposure = float(re.search(r"Overall exposure level for cloisterd\.service: ([\d.]+)", r.stdout)[1])
    print(f"systemd-analyze security --offline=yes: exposure {exposure}")
    # 3.9 measured; what remains is the runner's (namespaces, /proc) and root's start (docs/deployment.md)
    assert exposure <= 4.0, r.stdout


def test_sysusers_creates_each_roles_user(destdir, tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    r = subprocess.run(["systemd-sysusers", "--root", str(root), str(destdir / SYSUSERS.lstrip("/"))],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    passwd = {line.split(":")[0]: line.split(":") for line in (root / "etc" / "passwd").read_text().splitlines()}
    for role in ROLES:
        entry = passwd[f"cloister-{role}"]
        assert 0 < int(entry[2]) < 1000 and entry[6] == "/usr/sbin/nologin", entry


K8S_DIR = ROOT / "tests" / "k8s"
OVERLAYS = ROOT / "deploy" / "kubernetes" / "overlays"
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
                      "secret"}
RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def kubectl():
    """kubectl: $CLOISTER_KUBECTL, else the one on PATH (Debian's
    kubernetes-client, v1.20 with kustomize v2.0.3, or a newer one)."""
    path = os.environ.get("CLOISTER_KUBECTL") or shutil.which("kubectl")
    assert path, "kubectl not found: scripts/setup.sh installs kubernetes-client"
    return path


@pytest.fixture(scope="module")
def k8s_validator():
    if not (K8S_DIR / "node_modules" / "kubernetes-models").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=K8S_DIR, check=True, capture_output=True,
                       timeout=300)
    return K8S_DIR / "validate.mjs"


def validate(validator, objects):
    r = subprocess.run(["node", str(validator)], input=json.dumps(objects), capture_output=True, text=True,
                       cwd=K8S_DIR, timeout=300)
    assert r.stdout, r.stderr
    return r.returncode, json.loads(r.stdout)


@pytest.fixture(scope="module", params=sorted(p.name for p in OVERLAYS.iterdir()))
def rendered(request):
    r = subprocess.run([kubectl(), "kustomize", str(OVERLAYS / request.param)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    objects = [d for d in yaml.safe_load_all(r.stdout) if d]
    assert objects, "the overlay renders nothing"
    return objects


def by_kind(objects, kind):
    return {(o["metadata"].get("namespace"), o["metadata"]["name"]): o for o in objects if o["kind"] == kind}


def test_every_rendered_object_validates_against_the_kubernetes_schemas(rendered, k8s_validator):
    rc, out = validate(k8s_validator, rendered)
    assert rc == 0 and out["validated"] == len(rendered) and not out["problems"], out


def test_the_validator_finds_a_wrong_type_and_an_unknown_field(rendered, k8s_validator):
    broken = json.loads(json.dumps(rendered))
    service = next(o for o in broken if o["kind"] == "Service")
    service["spec"]["ports"][0]["port"] = "7443"
    pod = next(o for o in broken if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    pod["containers"][0]["securityContext"]["runAsNonRot"] = True
    rc, out = validate(k8s_validator, broken)
    assert rc == 1 and len(out["problems"]) == 2, out
    assert any("/spec/ports/0/port must be integer" in p for p in out["problems"]), out
    assert any("unknown field spec.template.spec.containers.0.securityContext.runAsNonRot" in p
               for p in out["problems"]), out


def test_the_layout_has_every_role(rendered):
    deployments, statefulsets = by_kind(rendered, "Deployment"), by_kind(rendered, "StatefulSet")
    assert deployments[("cloister", "cloister-api")]["spec"]["replicas"] >= 2
    assert deployments[("cloister", "cloister-proxy")]["spec"]["replicas"] >= 2
    assert ("cloister", "cloister-kms") in statefulsets and ("cloister", "cloister-audit") in statefulsets
    assert ("cloister-runner", "cloister-runner") in deployments
    # PostgreSQL is outside: the api takes its URL from a Secret; no Secret (no key) is ever rendered
    api = deployments[("cloister", "cloister-api")]["spec"]["template"]["spec"]["containers"][0]
    store = next(e for e in api["env"] if e["name"] == "CLOISTER_STORE_URL")
    assert store["valueFrom"]["secretKeyRef"] == {"name": "cloister-postgres", "key": "url"}
    assert "--store" in api["args"] and "$(CLOISTER_STORE_URL)" in api["args"]
    assert not by_kind(rendered, "Secret")


def workloads(objects):
    return [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]


def test_every_container_has_probes_limits_and_the_restricted_security_context(rendered, destdir):
    namespaces = by_kind(rendered, "Namespace")
    unit_caps = {c.removeprefix("CAP_") for c in
                 unit_setting((destdir / UNIT.lstrip("/")).read_text(), "CapabilityBoundingSet").split()}
    for w in workloads(rendered):
        name, ns = w["metadata"]["name"], w["metadata"]["namespace"]
        pod = w["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, name
        # PodSecurity restricted (the runner too): no host namespaces, ports or paths, the volume types it allows
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), name
        assert all(set(v) - {"name"} <= RESTRICTED_VOLUMES for v in pod["volumes"]), name
        assert not any(p.get("hostPort") for c in pod["containers"] for p in c.get("ports", [])), name
        labels = namespaces[(None, ns)]["metadata"]["labels"]
        for c in pod.get("initContainers", []) + pod["containers"]:
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", name
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", name
            assert c["startupProbe"]["httpGet"]["path"] == "/healthz", name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{name}: {kind}"
            sc = c["securityContext"]
            if name != "cloister-runner":
                assert labels["pod-security.kubernetes.io/enforce"] == "restricted", name
                assert {k: sc.get(k) for k in RESTRICTED_CONTAINER} == RESTRICTED_CONTAINER, name
                assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0, name
                assert sc.get("procMount", "Default") == "Default" and not sc["capabilities"].get("add"), name
                continue
            # the runner's exceptions, exactly those docs/deployment.md lists
            assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
            assert pod["hostUsers"] is False  # its root is an unprivileged uid on the node
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert not sc.get("privileged") and sc["runAsUser"] == 0 and sc["procMount"] == "Unmasked"
            assert sc["capabilities"]["drop"] == ["ALL"]
            # the same capabilities as the systemd unit's bounding set, which test_deploy shows suffice
            assert set(sc["capabilities"]["add"]) == unit_caps, (sc["capabilities"]["add"], unit_caps)
            assert sc["seccompProfile"] == {"type": "Unconfined"} and sc["appArmorProfile"] == {"type": "Unconfined"}


def test_network_policies_deny_by_default_and_every_workload_has_a_budget(rendered):
    policies = by_kind(rendered, "NetworkPolicy")
    budgets = list(by_kind(rendered, "PodDisruptionBudget").values())
    for ns in {ns for (_, ns) in by_kind(rendered, "Namespace")}:
        deny = policies[(ns, "default-deny")]["spec"]
        assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}, ns
    for w in workloads(rendered):
        labels, ns = w["spec"]["template"]["metadata"]["labels"], w["metadata"]["namespace"]
        own = [p for (pns, _), p in policies.items() if pns == ns and p["spec"]["podSelector"].get("matchLabels")
               and p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]
        assert len(own) == 1, w["metadata"]["name"]
        assert [b for b in budgets if b["metadata"]["namespace"] == ns
                and b["spec"]["selector"]["matchLabels"].items() <= labels.items()], w["metadata"]["name"]
    # the kms and audit take calls only from the roles that use them
    kms_from = policies[("cloister", "cloister-kms")]["spec"]["ingress"][0]["from"]
    assert sorted(p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in kms_from) == ["api", "runner"]
    assert "egress" not in policies[("cloister", "cloister-audit")]["spec"]


def test_the_configmaps_use_only_what_cloisterd_accepts(rendered, destdir, tmp_path):
    """`cloisterd --config FILE --check` on each role's file (the Secrets'
    files it names put in place): each is accepted, its peers included."""
    cloisterd = bindir(destdir) / "cloisterd"
    files = {name: text for o in by_kind(rendered, "ConfigMap").values() for name, text in o["data"].items()}
    assert sorted(files) == sorted(f"{r}.yaml" for r in ROLES)
    for name, text in files.items():
        secret = "/etc/cloister/credentials/unseal"
        if secret in text:
            (tmp_path / "unseal").write_text("a passphrase\n")
            text = text.replace(secret, str(tmp_path / "unseal"))
        path = tmp_path / name
        path.write_text(text)
        r = subprocess.run([str(cloisterd), "--config", str(path), "--check"], capture_output=True, text=True,
                           env=sanitizer_env(), timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
