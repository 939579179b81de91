"""CLI habits (issue 18): apply --dry-run and diff decided by the server as a
real apply but writing nothing (the store's revision stays), warnings about
references to missing resources, deletes of referenced resources refused
without --force, describe's reverse lookup, get -o wide|name and -w, the
completion scripts and version."""
import json
import os
import select
import shutil
import subprocess
import time

import pytest
import yaml

from conftest import CLOISTER, manifest, run_cli
from test_authz_writes import tenant_user

UPSTREAM = "http://127.0.0.1:9"


def cli(s, *args, input=None):
    p = run_cli(s, *args, input=input, env_extra={"CLOISTER_TOKEN": s.token})
    assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr
    return p


def revision(s):
    """The store's revision, as a list reports it (metadata.resourceVersion)."""
    r = s.request("GET", "/v1/policies")
    assert r.status_code == 200, r.text
    return int(r.json()["metadata"]["resourceVersion"])


def apply(s, *items):
    r = s.request("POST", "/v1/apply", json={"items": list(items)})
    assert r.status_code == 200, r.text
    return r.json()


def policy(name):
    return manifest("Policy", name, {"rules": [{"name": "r", "effect": "allow", "condition": {"match": "true"}}]})


def service(name, policies, **meta):
    return manifest("Service", name, {"upstream": {"url": UPSTREAM}, "policies": policies}, **meta)


def write_manifest(tmp_path, *docs):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump_all(list(docs)))
    return str(path)


def test_dry_run_and_diff_write_nothing_and_say_what_would_change(shared_server, tmp_path):
    s = shared_server
    apply(s, policy("dr-p1"), service("dr-svc", ["dr-p1"], labels={"team": "a"}))
    changed = [policy("dr-p1"),                                               # unchanged
               service("dr-svc", ["dr-p1", "dr-p2"], labels={"team": "b"}),   # updated: a policy and a label
               policy("dr-p2")]                                               # created
    path = write_manifest(tmp_path, *changed)
    before = revision(s)

    r = s.request("POST", "/v1/apply?dryRun=1", json={"items": changed})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dryRun"] is True
    assert [(i["kind"], i["name"], i["action"]) for i in body["items"]] == [
        ("Policy", "dr-p1", "unchanged"), ("Service", "dr-svc", "configured"), ("Policy", "dr-p2", "created")]
    svc = body["items"][1]
    assert svc["before"]["spec"]["policies"] == ["dr-p1"] and svc["after"]["spec"]["policies"] == ["dr-p1", "dr-p2"]
    assert body["items"][2]["before"] is None

    p = cli(s, "apply", "--dry-run", "-f", path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["policy/dr-p1 unchanged (dry run)", "service/dr-svc configured (dry run)",
                                     "policy/dr-p2 created (dry run)"]
    p = cli(s, "diff", "-f", path)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert "--- service/dr-svc (stored)" in lines and "+++ service/dr-svc (manifest)" in lines
    assert '-metadata.labels.team: "a"' in lines and '+metadata.labels.team: "b"' in lines
    assert ' spec.policies[0]: "dr-p1"' in lines and '+spec.policies[1]: "dr-p2"' in lines
    assert "--- policy/dr-p2 (absent)" in lines
    assert not any("dr-p1 (stored)" in x for x in lines)  # unchanged: no diff

    # nothing was written: the revision stays, the new policy does not exist
    assert revision(s) == before
    assert s.request("GET", "/v1/policies/dr-p2").status_code == 404
    assert s.request("GET", "/v1/services/dr-svc").json()["metadata"]["labels"] == {"team": "a"}

    # the real apply does what the dry run said
    real = apply(s, *changed)
    assert [(i["kind"], i["name"], i["action"]) for i in real["items"]] == [
        (i["kind"], i["name"], i["action"]) for i in body["items"]]
    assert revision(s) > before
    p = cli(s, "diff", "-f", path)
    assert p.returncode == 0 and p.stdout == "" and "no changes" in p.stderr


def test_dry_run_is_decided_as_a_real_apply(shared_server):
    s = shared_server
    token = tenant_user(s, "dr-nobody")
    before = revision(s)
    r = s.request("POST", "/v1/apply?dryRun=1", token=token, json={"items": [policy("dr-forbidden")]})
    assert r.status_code == 403, r.text
    r = s.request("POST", "/v1/apply?dryRun=1", json={"items": [manifest("Policy", "dr-bad", {"rules": []})]})
    assert r.status_code == 400 and r.json()["error"]["field"].startswith("spec.rules"), r.text
    assert revision(s) == before


def test_apply_warns_about_references_to_missing_resources(shared_server, tmp_path):
    s = shared_server
    docs = [manifest("Group", "w-devs", {"policies": ["w-nope-policy"]}),
            manifest("User", "w-alice", {"groups": ["w-devs", "w-nope-group"]}),
            manifest("Service", "w-svc", {"upstream": {"url": UPSTREAM}, "policies": ["w-devs-read"],
                                          "inject": {"secret": "w-nope-secret", "key": "token", "as": "bearer"}}),
            policy("w-devs-read")]
    body = apply(s, *docs)
    assert sorted(body["warnings"]) == sorted([
        "Group w-devs: spec.policies names Policy w-nope-policy, which does not exist",
        "User w-alice: spec.groups names Group w-nope-group, which does not exist",
        "Service w-svc: spec.inject.secret names Secret w-nope-secret, which does not exist"])
    p = cli(s, "apply", "-f", write_manifest(tmp_path, *docs))
    assert p.returncode == 0, p.stderr
    assert "warning: User w-alice: spec.groups names Group w-nope-group, which does not exist" in p.stderr
    # once they exist, no warning
    body = apply(s, policy("w-nope-policy"), manifest("Group", "w-nope-group", {}),
                 manifest("Secret", "w-nope-secret", {"data": {"token": "t"}}), *docs)
    assert body["warnings"] == []


def test_delete_of_a_referenced_resource_needs_force(shared_server):
    s = shared_server
    apply(s, policy("del-p"), service("del-svc", ["del-p"]), manifest("Group", "del-g", {"policies": ["del-p"]}))
    before = revision(s)
    r = s.request("DELETE", "/v1/policies/del-p")
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == "referenced"
    assert "Service/del-svc (spec.policies)" in err["message"] and "Group/del-g (spec.policies)" in err["message"]
    assert revision(s) == before
    p = cli(s, "delete", "policy", "del-p")
    assert p.returncode == 1 and "Service/del-svc" in p.stderr and "--force" in p.stderr
    assert s.request("GET", "/v1/policies/del-p").status_code == 200
    p = cli(s, "delete", "policy", "del-p", "--force")
    assert p.returncode == 0 and p.stdout == "policy/del-p deleted\n", p.stderr
    assert s.request("GET", "/v1/policies/del-p").status_code == 404
    # nothing refers to it: no force needed; a User's own credentials go with it
    apply(s, manifest("User", "del-u", {}), manifest("Credential", "del-u-cli", {"user": "del-u"}))
    assert cli(s, "delete", "user", "del-u").returncode == 0


def test_describe_shows_referrers_members_and_status(shared_server):
    s = shared_server
    apply(s, policy("ds-p"), manifest("Group", "ds-g", {"policies": ["ds-p"]}),
          manifest("User", "ds-u1", {"groups": ["ds-g"]}), manifest("User", "ds-u2", {"groups": ["ds-g"]}),
          service("ds-svc", ["ds-p"]), manifest("Secret", "ds-sec", {"data": {"token": "hunter2"}}),
          manifest("Service", "ds-svc2", {"upstream": {"url": UPSTREAM},
                                          "inject": {"secret": "ds-sec", "key": "token", "as": "bearer"}}))
    p = cli(s, "describe", "policy", "ds-p")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "Kind:             Policy" in out and "Name:             ds-p" in out and "Spec:" in out
    used = out[out.index("Used by:"):]
    assert "group/ds-g" in used and "service/ds-svc" in used and "spec.policies" in used
    p = cli(s, "describe", "group", "ds-g")
    members = p.stdout[p.stdout.index("Members:"):]
    assert "user/ds-u1" in members and "user/ds-u2" in members
    p = cli(s, "describe", "secret", "ds-sec")
    assert "service/ds-svc2" in p.stdout and "spec.inject.secret" in p.stdout and "hunter2" not in p.stdout
    assert "Status:" in p.stdout and "token" in p.stdout  # status.keys: the names, never the values
    p = cli(s, "describe", "policy", "ds-p", "-o", "json")
    got = json.loads(p.stdout)
    assert {(r["kind"], r["name"]) for r in got["referrers"]} == {("Group", "ds-g"), ("Service", "ds-svc")}
    assert got["object"]["metadata"]["name"] == "ds-p"
    assert cli(s, "describe", "policy", "ds-missing").returncode == 1


def test_get_wide_and_name(shared_server):
    s = shared_server
    apply(s, policy("gw-p"), manifest("User", "gw-u", {"policies": ["gw-p"], "email": "u@example.com"},
                                      labels={"tier": "gold"}))
    p = cli(s, "get", "users", "-o", "wide")
    assert p.returncode == 0, p.stderr
    header = p.stdout.splitlines()[0].split()
    assert header[:4] == ["NAME", "TYPE", "EMAIL", "GROUPS"] and "POLICIES" in header and "LABELS" in header
    row = next(x for x in p.stdout.splitlines() if x.startswith("gw-u "))
    assert "gw-p" in row and "tier=gold" in row
    p = cli(s, "get", "users", "-o", "name")
    assert p.returncode == 0 and "user/gw-u" in p.stdout.splitlines() and "user/admin" in p.stdout.splitlines()
    p = cli(s, "get", "policies", "gw-p", "-o", "name")
    assert p.stdout == "policy/gw-p\n"
    p = cli(s, "whoami", "-o", "wide")
    assert p.returncode == 2 and "-o takes json or yaml" in p.stderr


class LineReader:
    """Lines of a process's stdout as they come (raw reads, so select() sees
    every byte not yet returned)."""

    def __init__(self, proc):
        self.fd = proc.stdout.fileno()
        self.buf = b""

    def until(self, needle, deadline):
        """Lines up to the first holding NEEDLE (before DEADLINE)."""
        seen = []
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                seen.append(line.decode())
                if needle in seen[-1]:
                    return seen
            ready, _, _ = select.select([self.fd], [], [], max(0, deadline - time.time()))
            chunk = os.read(self.fd, 65536) if ready else b""
            if not chunk:
                raise AssertionError(f"no line with {needle!r} from the watch; got {seen}")
            self.buf += chunk


def test_get_watch_prints_changes_made_by_another_client(shared_server):
    s = shared_server
    apply(s, service("gwatch-0", []))
    env = {**os.environ, "CLOISTER_SERVER": s.url, "CLOISTER_CA": s.ca, "CLOISTER_TOKEN": s.token}
    proc = subprocess.Popen([str(CLOISTER), "get", "services", "-w"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env)
    out = LineReader(proc)
    try:
        deadline = time.time() + 20
        # the current state first: once gwatch-0 is printed the stream is open
        out.until("service/gwatch-0", deadline)
        apply(s, service("gwatch-1", []))
        lines = out.until("service/gwatch-1", deadline)
        assert lines[-1].startswith("ADDED") and "resourceVersion" in lines[-1]
        s.request("DELETE", "/v1/services/gwatch-1")
        lines = out.until("service/gwatch-1", deadline)
        assert lines[-1].startswith("DELETED")
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_completion_scripts_load(shared_server):
    p = cli(shared_server, "completion", "bash")
    assert p.returncode == 0, p.stderr
    for word in ("diff", "describe", "completion", "version", "apply", "attestationpolicies", "--dry-run", "--force"):
        assert word in p.stdout
    r = subprocess.run(["bash", "-c", "source <(\"$0\" completion bash) && complete -p cloister", str(CLOISTER)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "complete -F _cloister cloister" in r.stdout, r.stderr
    # what it offers after "cloister get " and "cloister describe policies "
    script = ("source <(\"$0\" completion bash); COMP_WORDS=(cloister get att); COMP_CWORD=2; _cloister; "
              "echo \"${COMPREPLY[*]}\"; COMP_WORDS=(cloister des); COMP_CWORD=1; _cloister; echo \"${COMPREPLY[*]}\"")
    r = subprocess.run(["bash", "-c", script, str(CLOISTER)], capture_output=True, text=True, timeout=30)
    assert r.stdout.splitlines() == ["attestationpolicies", "describe"], r.stderr
    s = shared_server
    # names are completed by `cloister get KIND -o name`: the cloister found on PATH
    env = {**os.environ, "CLOISTER_SERVER": s.url, "CLOISTER_CA": s.ca, "CLOISTER_TOKEN": s.token,
           "PATH": f"{CLOISTER.parent}:{os.environ['PATH']}"}
    apply(s, policy("compl-p"))
    script = "source <(\"$0\" completion bash); COMP_WORDS=(cloister describe policies compl); COMP_CWORD=3; " \
             "_cloister; echo \"${COMPREPLY[*]}\""
    r = subprocess.run(["bash", "-c", script, str(CLOISTER)], capture_output=True, text=True, timeout=30, env=env)
    assert r.stdout.strip() == "compl-p", r.stderr
    assert cli(s, "completion", "fish").returncode == 2
    if shutil.which("zsh"):
        r = subprocess.run(["zsh", "-c", "source <(\"$0\" completion zsh) && whence -w _cloister", str(CLOISTER)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "function" in r.stdout, r.stderr


def test_version_reports_client_and_server(shared_server):
    s = shared_server
    r = s.request("GET", "/v1/version", token="")
    assert r.status_code == 200 and r.json()["apiVersion"] == "cloister.dev/v1", r.text
    p = run_cli(s, "version", "-o", "json")  # no token: the version needs none
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["client"]["version"] == r.json()["version"] == got["server"]["version"]
    assert "build" in got["client"]["build"] and got["server"]["url"] == s.url
    p = run_cli(s, "version")
    assert p.stdout.startswith(f"cloister {got['client']['version']}\n") and f"server {s.url}: cloister" in p.stdout
    p = run_cli(s, "version", env_extra={"CLOISTER_SERVER": "https://127.0.0.1:9"})
    assert p.returncode == 0 and "not reachable" in p.stdout


def test_help_lists_every_command(shared_server):
    p = cli(shared_server, "--help")
    assert p.returncode == 0
    for name in ("diff", "describe", "completion", "version", "apply", "get", "delete", "notifications", "job"):
        assert f"\n  {name} " in p.stdout


def test_referrers_and_the_delete_check_tell_only_what_the_caller_may_see(shared_server):
    s = shared_server
    apply(s, policy("rv-p"), service("rv-svc", ["rv-p"]), manifest("Group", "rv-g", {"policies": ["rv-p"]}))
    viewer = tenant_user(s, "rv-viewer", 'ctx.request.api.verb == "get" && ctx.request.api.kind in ["Policy", "Group"]')
    r = s.request("GET", "/v1/policies/rv-p/referrers", token=viewer)
    assert r.status_code == 200, r.text
    assert r.json()["referrers"] == [{"kind": "Group", "name": "rv-g", "field": "spec.policies"}]
    assert r.json()["total"] == 1  # the Service it may not get is neither listed nor counted
    r = s.request("GET", "/v1/policies/rv-p/referrers")
    assert {(x["kind"], x["name"]) for x in r.json()["referrers"]} == {("Group", "rv-g"), ("Service", "rv-svc")}
    assert s.request("GET", "/v1/services/rv-svc/referrers", token=viewer).status_code == 403
    assert s.request("GET", "/v1/policies/rv-missing/referrers").status_code == 404
    # a delete it may not make is refused as such, naming no referrer
    r = s.request("DELETE", "/v1/policies/rv-p", token=viewer)
    assert r.status_code == 403 and "rv-svc" not in r.text, r.text
    # a writer who may get Policies is warned about a missing one
    writer = tenant_user(s, "rv-writer", 'ctx.request.api.kind == "Service" || '
                                         '(ctx.request.api.verb in ["get", "bind"] && ctx.request.api.kind == "Policy")')
    r = s.request("POST", "/v1/apply?dryRun=1", token=writer,
                  json={"items": [service("rv-svc2", ["rv-p", "rv-nope"])]})
    assert r.status_code == 200, r.text
    assert r.json()["warnings"] == ["Service rv-svc2: spec.policies names Policy rv-nope, which does not exist"]


def test_warnings_and_referrers_are_capped(shared_server):
    s = shared_server
    body = apply(s, manifest("Group", "cap-g", {"policies": [f"cap-missing-{i}" for i in range(60)]}))
    assert len(body["warnings"]) == 51 and body["warnings"][-1] == "and 10 more references to missing resources"
    apply(s, policy("cap-p"), *[manifest("Group", f"cap-g{i}", {"policies": ["cap-p"]}) for i in range(105)])
    r = s.request("GET", "/v1/policies/cap-p/referrers").json()
    assert len(r["referrers"]) == 100 and r["total"] == 105 and r["truncated"] is True
    err = s.request("DELETE", "/v1/policies/cap-p").json()["error"]
    assert err["message"].count("Group/cap-g") == 10 and "and 95 more" in err["message"]
    p = cli(s, "describe", "policy", "cap-p")
    assert "105 referrers in all; the first 100 are shown" in p.stdout


def test_a_dry_run_never_shows_secret_values(shared_server, tmp_path):
    s = shared_server
    apply(s, manifest("Secret", "dr-sec", {"data": {"token": "old-value-1234"}}))
    new = manifest("Secret", "dr-sec", {"data": {"token": "new-value-5678", "extra": "more-5678"}})
    r = s.request("POST", "/v1/apply?dryRun=1", json={"items": [new]})
    assert r.status_code == 200 and "value-" not in r.text, r.text
    item = r.json()["items"][0]
    assert item["action"] == "configured"
    assert item["before"]["spec"] == {"data": {"token": "(hidden)"}}
    assert item["after"]["spec"] == {"data": {"token": "(hidden)", "extra": "(hidden)"}}
    p = cli(s, "diff", "-f", write_manifest(tmp_path, new))
    assert p.returncode == 0 and "value-" not in p.stdout and '+spec.data.extra: "(hidden)"' in p.stdout, p.stdout
