"""Blocking calls leave the API's event loop free (src/httpd/offload.c): with
one API loop, an identity provider that holds its discovery answer (this
test's own HTTPS server on loopback, released when the test says so) does
not keep another request on that loop from being answered at once."""
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from conftest import Server, manifest
from test_oidc import make_pki


class HeldProvider:
    """An HTTPS server that says when a request arrived and answers it (503)
    only once released."""

    def __init__(self, d):
        self.arrived = threading.Event()
        self.release = threading.Event()
        held = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                held.arrived.set()
                held.release.wait(60)
                body = json.dumps({"error": "held"}).encode()
                self.send_response(503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.ca = make_pki(d)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(d / "idp.pem", d / "idp.key")
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.issuer = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def quick(server, method, path, **kw):
    """A request that must be answered within 5 s (not waiting on the held provider)."""
    return requests.request(method, server.url + path, headers={"Authorization": f"Bearer {server.token}"},
                            verify=server.ca, timeout=5, **kw)


def test_a_slow_identity_provider_does_not_block_the_api_loop(tmp_path):
    d = tmp_path / "idp"
    d.mkdir()
    idp = HeldProvider(d)
    server = Server(tmp_path / "data", extra_args=["--api-threads", "1"]).start()
    try:
        r = server.request("POST", "/v1/apply", json={"items": [
            manifest("Secret", "slow-client", {"data": {"secret": "s"}}),
            manifest("IdentityProvider", "slow", {
                "type": "oidc", "issuer": idp.issuer, "clientId": "cloister",
                "clientSecret": {"secret": "slow-client", "key": "secret"}, "ca": idp.ca.read_text()})]})
        assert r.status_code == 200, r.text

        login = {}

        def start_login():
            login["r"] = requests.get(server.url + "/v1/auth/oidc/slow/login", verify=server.ca,
                                      allow_redirects=False, timeout=60)

        t = threading.Thread(target=start_login)
        t.start()
        assert idp.arrived.wait(30), "the API never asked the provider for its discovery document"

        # discovery is held: the one API loop still answers, a KMS call included
        who = quick(server, "GET", "/v1/whoami")
        assert who.status_code == 200, who.text
        r = quick(server, "POST", "/v1/keys", json=manifest("Key", "k", {"purpose": "encrypt"}))
        assert r.status_code == 201, r.text
        enc = quick(server, "POST", "/v1/kms/encrypt", json={"key": "k", "plaintext": "aGVsbG8="})
        assert enc.status_code == 200, enc.text
        assert "r" not in login and not idp.release.is_set(), "the login answered before its provider did"

        idp.release.set()
        t.join(60)
        assert login["r"].status_code == 502, login["r"].text
        assert "discovery" in login["r"].json()["error"]["message"]
    finally:
        idp.stop()
        server.stop()
