"""docs/openapi.yaml and the server agree: every documented route and method
exists, every documented kind is served, and a sample of responses has the
documented shape."""
from pathlib import Path

import yaml

from conftest import manifest

SPEC = yaml.safe_load((Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml").read_text())


def concrete(path):
    return path.replace("{kind}", "groups").replace("{name}", "openapi-probe")


def test_every_documented_route_and_method_exists(shared_server):
    s = shared_server
    s.request("POST", "/v1/groups", json=manifest("Group", "openapi-probe", {}))
    for path, ops in SPEC["paths"].items():
        for method in ops:
            if method == "parameters":
                continue
            url = concrete(path)
            kw = {}
            if method in ("post", "put"):
                kw["json"] = {"items": [manifest("Group", "openapi-probe", {})]} if path == "/v1/apply" \
                    else manifest("Group", "openapi-probe" if "{name}" in path else "openapi-new", {})
            r = s.request(method.upper(), url, stream=True, **kw)  # an event stream never ends by itself
            assert r.status_code != 405, (method, path, r.text)
            if r.status_code == 404:
                assert "no such endpoint" not in r.text, (method, path)
            documented = set(ops[method]["responses"])
            assert str(r.status_code) in documented, (method, path, r.status_code, r.text)
            r.close()
            if method == "delete":
                s.request("POST", "/v1/groups", json=manifest("Group", "openapi-probe", {}))


def test_every_documented_kind_is_served(shared_server):
    kinds = SPEC["components"]["parameters"]["kind"]["schema"]["enum"]
    for k in kinds:
        r = shared_server.request("GET", f"/v1/{k}")
        assert r.status_code == 200, k
        assert r.json()["kind"] == "List"


def test_undocumented_paths_are_not_served(shared_server):
    for path in ("/v1", "/v1/", "/admin", "/v1/groups/a/b"):
        assert shared_server.request("GET", path).status_code == 404, path
