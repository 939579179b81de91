"""A cloisterd --dev whose proxy serves one Service `wiki` (plain HTTP on a
loopback port, in front of an EchoUpstream) to the user alice (group devs,
allowed everything but /admin/*) and bob (in no group: denied), for the
tests that need proxied traffic (test_access_log.py, test_prometheus.py).

    g = Proxied(tmp_path_factory.mktemp("x") / "data")
    g.get("/path", g.alice)       # a request through the proxy
    g.stop()
"""
import time

import requests

from conftest import manifest, start_with_proxy
from echo_upstream import EchoUpstream

DOMAIN = "localhost"


class Proxied:
    def __init__(self, data_dir):
        self.up = EchoUpstream()
        up_port = self.up.start()
        try:
            self.s, self.http_port, self.https_port = start_with_proxy(data_dir, DOMAIN)
        except BaseException:
            self.up.stop()
            raise
        self.apply(
            manifest("Group", "devs", {}),
            manifest("User", "alice", {"type": "human", "email": "alice@example.com", "groups": ["devs"]}),
            manifest("User", "bob", {"type": "human", "email": "bob@example.com", "groups": []}),
            manifest("Credential", "alice-cli", {"user": "alice", "type": "authToken"}),
            manifest("Credential", "bob-cli", {"user": "bob", "type": "authToken"}),
            manifest("Policy", "devs-read", {"rules": [
                {"name": "devs-may-read", "effect": "allow", "priority": 0,
                 "condition": {"match": '"devs" in ctx.user.groups'}},
                {"name": "no-admin", "effect": "deny", "priority": -1,
                 "condition": {"match": 'ctx.request.http.path.startsWith("/admin")'}},
            ]}),
            manifest("Service", "wiki", {"upstream": {"url": f"http://127.0.0.1:{up_port}"},
                                         "policies": ["devs-read"]}),
        )
        self.alice = self.login("alice-cli")
        self.bob = self.login("bob-cli")
        # both sessions have reached the proxy (it learns them from its configuration stream)
        self.wait_status("/", self.alice, 200)
        self.wait_status("/", self.bob, 403)

    def apply(self, *items):
        r = self.s.request("POST", "/v1/apply", json={"items": list(items)})
        assert r.status_code == 200, r.text

    def login(self, credential):
        tok = self.s.request("POST", "/v1/tokens", json={"credential": credential}).json()["token"]
        r = self.s.request("POST", "/v1/auth/token", token="", json={"token": tok})
        assert r.status_code == 200, r.text
        return r.json()["access_token"]

    def get(self, path, token=None, host=f"wiki.{DOMAIN}", method="GET"):
        h = {"Host": host}
        if token:
            h["Authorization"] = f"Bearer {token}"
        return requests.request(method, f"http://127.0.0.1:{self.http_port}{path}", headers=h, timeout=10,
                                allow_redirects=False)

    def wait_status(self, path, token, want, timeout=10):
        """Polls PATH until it answers WANT (the proxy applies a configuration within a second)."""
        deadline = time.time() + timeout
        while (r := self.get(path, token)).status_code != want:
            assert time.time() < deadline, f"{path}: wanted {want}, last {r.status_code}: {r.text}"
            time.sleep(0.05)
        return r

    def stop(self):
        try:
            self.s.stop()
        finally:
            self.up.stop()
