"""Several api and proxy replicas on one PostgreSQL (docs/deployment.md,
"Several replicas"): a real server started by scripts/pg-test.sh (the
session's `postgres` fixture of conftest.py); `cloisterd --init` once (its store that
database); then the kms, the audit and the runner each a cloisterd of its own
and two replicas with roles [api, proxy], all talking over mutual TLS, each
with its own copy of what --init made (as on machines of their own: the
replicas share the bootstrap tokens and auth/handoff.key, which seals the
token signing keys they keep in the database).

Shown: a write through replica 1 is visible on replica 2 and a new Service
answers through both proxies within 1 s (measured); an access token minted on
one replica works on the other and through both proxies, and both serve the
same JWKS, also after a rotation; conflicting updates of the same
resourceVersion sent to the two replicas: exactly one wins, the other 409;
racing claims of one new host for different Services through both: one wins;
kill -9 of replica 1 during a write stream loses no acknowledged write; kill
-9 of the controller's leader: the other takes its lease within the TTL; a
paused (SIGSTOP) leader is deposed, and once resumed its write carrying the
old fencing token (its lease renewal) is refused by the database and logged."""
import http.client
import os
import random
import re
import shutil
import signal
import ssl
import statistics
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import requests
import yaml

from conftest import (ROOT, Server, free_port, manifest, open_for_roles, pg_ctl, pg_drop_database, pg_new_database,
                      psql, run_documented)
from echo_upstream import EchoUpstream
from test_oidc import CLIENT_SECRET, Provider, make_pki, node_modules, to_callback  # noqa: F401 (a fixture)
from test_host_claims import ROUNDS, race_rounds
from test_roles_apart import PASSPHRASE, cloisterd, wait_log
from test_store_pg import service

DOMAIN = "localhost"
LEASE_TTL_S = 15  # CONTROLLER_LEASE_TTL_MS
STANDBY_POLL_S = 1  # a standby controller tries to take the lease every second


class Replicas:
    """kms, audit and runner apart, two [api, proxy] replicas on database URL, an upstream."""

    def __init__(self, tmp, url):
        self.url = url
        self.up = EchoUpstream()
        self.up_port = self.up.start()
        open_for_roles(tmp)
        init = tmp / "init.yaml"
        init.write_text(yaml.safe_dump({"dataDir": str(tmp / "init"), "roles": ["api", "proxy", "kms", "audit",
                                                                                 "runner"],
                                        "store": {"url": url}, "kms": {"seal": {"mode": "passphrase"}}}))
        p = cloisterd("--init", "--config", str(init), input="")
        assert p.returncode == 0, p.stderr
        ports = {role: free_port() for role in ("kms", "audit", "runner")}
        peer = {role: f"https://127.0.0.1:{port}" for role, port in ports.items()}
        self.http_ports = [free_port(), free_port()]
        self.s = [Server(tmp / f"api{i + 1}", config=tmp / f"api{i + 1}.yaml",
                         extra_args=["--domain", DOMAIN, "--proxy-http-listen", f"127.0.0.1:{self.http_ports[i]}"])
                  for i in range(2)]
        docs = {
            "kms": {"roles": ["kms"], "kms": {"listen": f"127.0.0.1:{ports['kms']}", "seal": {"mode": "passphrase"}},
                    "peers": {"audit": peer["audit"]}},
            "audit": {"roles": ["audit"], "audit": {"listen": f"127.0.0.1:{ports['audit']}"}},
            "runner": {"roles": ["runner"], "runner": {"listen": f"127.0.0.1:{ports['runner']}"},
                       "peers": {"api": self.s[0].url, "audit": peer["audit"]}},
        }
        for i in range(2):
            docs[f"api{i + 1}"] = {"roles": ["api", "proxy"], "store": {"url": url},
                                   "peers": {"kms": peer["kms"], "audit": peer["audit"], "runner": peer["runner"]}}
        self.apart = {}
        for name, doc in docs.items():
            shutil.copytree(tmp / "init", tmp / name, symlinks=True)  # a machine's own copy of what --init made
            path = tmp / f"{name}.yaml"
            path.write_text(yaml.safe_dump({"dataDir": str(tmp / name), **doc}, sort_keys=False))
            check = cloisterd("--config", str(path), "--check")
            assert check.returncode == 0, check.stderr
            if not name.startswith("api"):
                self.apart[name] = Server(tmp / name, config=path)
        try:
            for name in ("audit", "kms", "runner"):
                self.apart[name].start(wait=False)
                wait_log(self.apart[name], '"msg":"every role is ready"')
            for s in self.s:
                s.start()
            p = cloisterd("unseal", "--kms", peer["kms"], "--pki-dir", str(tmp / "init"), "--passphrase-fd", "0",
                          input=PASSPHRASE + "\n")
            assert p.returncode == 0, p.stdout + p.stderr
            for s in self.s:
                wait_for("/readyz 200", lambda: requests.get(s.url + "/readyz", verify=s.ca).status_code == 200,
                         30, step=0.1)
        except BaseException:
            self.stop(kill=True)
            raise

    def stop(self, kill=False):
        for s in [*self.s, *(self.apart[n] for n in ("runner", "kms", "audit") if n in self.apart)]:
            if s.proc:
                s.kill9() if kill else s.stop()
        self.up.stop()

    def proxy_get(self, i, host, token, path="/"):
        return requests.get(f"http://127.0.0.1:{self.http_ports[i]}{path}", timeout=10, allow_redirects=False,
                            headers={"Host": host, "Authorization": f"Bearer {token}"})

    def mint(self, i, credential):
        """An access token minted by replica I from a new credential token of CREDENTIAL."""
        tok = self.s[i].request("POST", "/v1/tokens", json={"credential": credential})
        assert tok.status_code in (200, 201), tok.text
        r = self.s[i].request("POST", "/v1/auth/token", token="", json={"token": tok.json()["token"]})
        assert r.status_code == 200, r.text
        return r.json()["access_token"]

    def lease(self):
        """(holder, token) of the controller lease, or None."""
        row = psql(self.url, "SELECT holder || '|' || token FROM leases WHERE name = 'controller'")
        return tuple(row.split("|")) if row else None

    def leader(self):
        """The index of the replica whose controller holds the lease."""
        holder, _ = self.lease()
        found = [i for i, s in enumerate(self.s) if s.proc and holder.endswith(f"127.0.0.1:{s.port}")]
        assert len(found) == 1, (holder, [s.port for s in self.s])
        return found[0]


def wait_for(what, pred, timeout, step=0.005):
    """Polls PRED until it is true; returns the seconds it took."""
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout, f"{what}: not within {timeout}s"
        time.sleep(step)
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def replicas(postgres, tmp_path_factory):
    url = pg_new_database(postgres)
    r = Replicas(tmp_path_factory.mktemp("replicas"), url)
    r.s[0].request("POST", "/v1/apply", json={"items": [
        manifest("Group", "devs", {}),
        manifest("User", "alice", {"type": "human", "email": "alice@example.com", "groups": ["devs"]}),
        manifest("Credential", "alice-cli", {"user": "alice", "type": "authToken"}),
        manifest("Policy", "devs-in", {"rules": [{"effect": "allow", "priority": 0,
                                                  "condition": {"match": '"devs" in ctx.user.groups'}}]}),
    ]}).raise_for_status()
    yield r
    r.stop()
    pg_drop_database(postgres, url)


def test_a_write_on_one_replica_is_visible_on_the_other_and_through_both_proxies_within_1s(replicas):
    r = replicas
    token = r.mint(0, "alice-cli")
    to_api2, to_proxy = [], [[], []]
    for n in range(5):
        name = f"visible-{n}"
        svc = manifest("Service", name, {"upstream": {"url": f"http://127.0.0.1:{r.up_port}"},
                                         "policies": ["devs-in"]})
        t0 = time.monotonic()
        assert r.s[0].request("POST", "/v1/services", json=svc).status_code == 201
        acked = time.monotonic()
        to_api2.append(wait_for("replica 2 GET", lambda: r.s[1].request(
            "GET", f"/v1/services/{name}").status_code == 200, 1.0) + (acked - t0))
        for i in (0, 1):
            to_proxy[i].append(wait_for(f"proxy {i + 1}", lambda: r.proxy_get(
                i, f"{name}.{DOMAIN}", token).status_code == 200, 1.0) + (acked - t0))
    print(f"\nreplica 2 sees replica 1's write: median {statistics.median(to_api2) * 1000:.1f} ms, "
          f"max {max(to_api2) * 1000:.1f} ms; through proxy 1: max {max(to_proxy[0]) * 1000:.1f} ms, "
          f"proxy 2: median {statistics.median(to_proxy[1]) * 1000:.1f} ms, max {max(to_proxy[1]) * 1000:.1f} ms")
    assert max(to_api2) < 1.0 and max(to_proxy[0]) < 1.0 and max(to_proxy[1]) < 1.0


def test_a_token_minted_on_one_replica_works_on_the_other_and_through_both_proxies(replicas):
    r = replicas
    r.s[0].request("POST", "/v1/services", json=manifest(
        "Service", "tokens", {"upstream": {"url": f"http://127.0.0.1:{r.up_port}"}, "policies": ["devs-in"]}))
    jwks = [s.request("GET", "/.well-known/jwks.json", token="").json() for s in r.s]
    assert jwks[0] == jwks[1] and jwks[0]["keys"], jwks
    for minted_on in (0, 1):
        token = r.mint(minted_on, "alice-cli")
        for i in (0, 1):
            who = r.s[i].request("GET", "/v1/whoami", token=token)
            assert who.status_code == 200 and who.json()["user"] == "alice", who.text
            wait_for(f"proxy {i + 1} lets the token in",
                     lambda: r.proxy_get(i, f"tokens.{DOMAIN}", token).status_code == 200, 5)
    # a rotation on replica 2: replica 1 verifies the new key's tokens at once and serves the same JWKS
    rotated = r.s[1].request("POST", "/v1/auth/keys/rotate")
    assert rotated.status_code == 200, rotated.text
    token = r.mint(1, "alice-cli")
    assert r.s[0].request("GET", "/v1/whoami", token=token).status_code == 200
    wait_for("the same JWKS on both replicas", lambda: len({str(s.request(
        "GET", "/.well-known/jwks.json", token="").json()) for s in r.s}) == 1, 3, step=0.1)
    for i in (0, 1):
        wait_for(f"proxy {i + 1} knows the new key",
                 lambda: r.proxy_get(i, f"tokens.{DOMAIN}", token).status_code == 200, 5)
    # the keys rest sealed in the database: no private part in clear
    stored = psql(r.url, "SELECT doc::text FROM resources WHERE kind = 'SigningKeyring'")
    assert '"sealed"' in stored and '"d"' not in stored and '"kty"' not in stored


def test_an_oidc_login_started_on_one_replica_finishes_on_the_other_once(replicas, node_modules, tmp_path):
    r = replicas
    d = tmp_path / "oidc"
    d.mkdir()
    ca = make_pki(d)
    idp = Provider(d, "a", r.s[0].port)  # the callback it knows is replica 1's; a load balancer sends it to 2
    try:
        bundle = d / "bundle.pem"
        bundle.write_text(Path(r.s[0].ca).read_text().strip() + "\n" + ca.read_text())
        applied = r.s[0].request("POST", "/v1/apply", json={"items": [
            manifest("Secret", "oidc-client", {"data": {"secret": CLIENT_SECRET}}),
            manifest("IdentityProvider", "test", {
                "type": "oidc", "issuer": idp.issuer, "clientId": "cloister",
                "clientSecret": {"secret": "oidc-client", "key": "secret"}, "scopes": ["openid", "email", "groups"],
                "createUsers": True, "ca": ca.read_text()})]})
        assert applied.status_code == 200, applied.text
        http = requests.Session()
        http.trust_env = False
        http.verify = str(bundle)
        start = http.get(f"{r.s[0].url}/v1/auth/oidc/test/login", allow_redirects=False, timeout=30)
        assert start.status_code == 302, start.text
        cb = to_callback(http, start.headers["Location"], login="dave")
        assert cb.startswith(f"{r.s[0].url}/v1/auth/oidc/callback?")
        on_replica_2 = cb.replace(r.s[0].url, r.s[1].url)
        done = http.get(on_replica_2, allow_redirects=False, timeout=30)
        assert done.status_code == 200 and done.json()["user"] == "dave", done.text
        token = done.headers["Set-Cookie"].split(";")[0].split("=", 1)[1]
        assert r.s[0].request("GET", "/v1/whoami", token=token).json()["user"] == "dave"
        # the login's state is spent on every replica
        for url in (cb, on_replica_2):
            again = http.get(url, allow_redirects=False, timeout=30)
            assert again.status_code == 400 and "state" in again.json()["error"]["message"], again.text
        # in progress it rests sealed in the store: neither state nor verifier in clear
        state = parse_qs(urlparse(start.headers["Location"]).query)["state"][0]
        start2 = http.get(f"{r.s[1].url}/v1/auth/oidc/test/login", allow_redirects=False, timeout=30)
        state2 = parse_qs(urlparse(start2.headers["Location"]).query)["state"][0]
        stored = psql(r.url, "SELECT doc::text FROM resources WHERE kind = 'PendingLogin'")
        assert stored and state2 not in stored and state not in stored and '"sealed"' in stored
    finally:
        idp.stop()


def test_a_login_handoff_taken_through_one_proxy_is_refused_through_the_other(replicas, node_modules, tmp_path):
    from test_browser_login import Env, login_to_handoff, page_message, set_cookies
    r = replicas
    d = tmp_path / "oidc"
    d.mkdir()
    ca = make_pki(d)
    idp = Provider(d, "a", r.s[0].port)
    try:
        bundle = d / "bundle.pem"
        bundle.write_text(Path(r.s[0].ca).read_text().strip() + "\n" + ca.read_text())
        applied = r.s[0].request("POST", "/v1/apply", json={"items": [
            manifest("Secret", "oidc-client", {"data": {"secret": CLIENT_SECRET}}),
            manifest("IdentityProvider", "test", {
                "type": "oidc", "issuer": idp.issuer, "clientId": "cloister",
                "clientSecret": {"secret": "oidc-client", "key": "secret"}, "scopes": ["openid", "email", "groups"],
                "createUsers": True, "ca": ca.read_text()}),
            manifest("Service", "handoff", {"upstream": {"url": f"http://127.0.0.1:{r.up_port}"},
                                            "policies": ["devs-in"]})]})
        assert applied.status_code == 200, applied.text
        # both proxies behind one public authority (a load balancer's)
        e = [Env(r.s[i], r.up, idp, r.http_ports[i], str(bundle)) for i in (0, 1)]
        host = f"handoff.{DOMAIN}"
        for i in (0, 1):
            wait_for(f"proxy {i + 1} routes the service", lambda: e[i].proxy("/", host=host).status_code == 302, 5)
        loc = login_to_handoff(e[0], "/twice", host=host).headers["Location"]
        e[1].login_cookie = e[0].login_cookie  # the same browser
        taken = e[0].follow(loc)
        assert taken.status_code == 302 and "cloister_session" in set_cookies(taken), taken.text
        again = e[1].follow(loc)
        assert again.status_code == 400 and "Set-Cookie" not in again.headers, again.text
        assert "already used" in page_message(again)
        assert e[0].follow(loc).status_code == 400  # and through the proxy that took it
    finally:
        idp.stop()


IP_BURST, IP_WINDOW_S = 100, 10  # handlers-auth.c: 100 token requests per address, a window of 10 s


def test_the_token_exchange_limit_per_address_is_shared_by_the_replicas(replicas):
    r = replicas
    # an address of our own (any 127.x reaches the loopback listeners), so no other test's requests count
    source = f"127.{random.randint(1, 254)}.{random.randint(0, 254)}.{random.randint(1, 254)}"
    conns = []
    for s in r.s:
        ctx = ssl.create_default_context(cafile=str(s.ca))
        conns.append(http.client.HTTPSConnection("127.0.0.1", s.port, context=ctx, timeout=10,
                                                 source_address=(source, 0)))

    def exchange(i):
        conns[i].request("POST", "/v1/auth/token", body=b'{"token": "not a credential"}',
                         headers={"Content-Type": "application/json"})
        res = conns[i].getresponse()
        return res.status, res.getheader("Retry-After"), res.read()

    t0 = time.monotonic()
    for n in range(IP_BURST):  # spread over both replicas: 50 each, within each one's own bucket
        status, _, body = exchange(n % 2)
        assert status == 401, (n, status, body)
    for i in (0, 1):  # the address spent the limit: refused on both replicas
        status, retry_after, body = exchange(i)
        assert status == 429 and b"rate_limited" in body, (i, status, body)
        assert 1 <= int(retry_after) <= IP_WINDOW_S
    elapsed = time.monotonic() - t0
    assert elapsed < IP_WINDOW_S, f"{elapsed:.1f} s: longer than the window, the count above proves nothing"
    print(f"\n{IP_BURST} exchanges over two replicas, then 429 on both: {elapsed:.2f} s")
    for c in conns:
        c.close()
    counter = psql(r.url, f"SELECT count FROM counters WHERE name = 'ratelimit/address/{source}'")
    assert counter == str(IP_BURST + 2), counter


def test_conflicting_updates_on_two_replicas_exactly_one_wins(replicas):
    r = replicas
    assert r.s[0].request("POST", "/v1/services", json=service("race")).status_code == 201
    for round_ in range(10):
        rv = r.s[0].request("GET", "/v1/services/race").json()["metadata"]["resourceVersion"]
        codes = {}
        barrier = threading.Barrier(2)

        def put(i):
            barrier.wait()
            codes[i] = r.s[i].request("PUT", "/v1/services/race",
                                      json=service("race", f"http://127.0.0.1:{9100 + 2 * round_ + i}", rv)).status_code

        threads = [threading.Thread(target=put, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(codes.values()) == [200, 409], codes


def test_racing_claims_of_one_host_on_two_replicas_exactly_one_wins(replicas):
    """Writers on both replicas at once, each claiming the same new host for
    another Service (tests/test_host_claims.py's rounds): each round exactly
    one wins and the others get the 409 naming it."""
    wins, _ = race_rounds(replicas.s, "replicated")
    print(f"winners by racer index (even: replica 1, odd: replica 2) over {ROUNDS} rounds: {dict(sorted(wins.items()))}")


def test_restarting_postgresql_both_replicas_reconnect_and_catch_up(replicas):
    """PostgreSQL stopped under both replicas: each answers 503 naming the store
    and keeps running; once it is back, a write through replica 2 reaches
    replica 1 and both proxies, and replica 1 writes again."""
    r = replicas
    token = r.mint(0, "alice-cli")
    pg_ctl(r.url, "stop")
    try:
        for i in (0, 1):
            resp = r.s[i].request("GET", "/v1/services/race")
            assert resp.status_code == 503 and resp.json()["error"]["code"] == "store_unavailable", resp.text
            assert r.s[i].proc.poll() is None, f"replica {i + 1} still runs"
    finally:
        pg_ctl(r.url, "start")
    svc = manifest("Service", "after-restart", {"upstream": {"url": f"http://127.0.0.1:{r.up_port}"},
                                                "policies": ["devs-in"]})
    wait_for("replica 2 writes again", lambda: r.s[1].request("POST", "/v1/services", json=svc).status_code == 201,
             30, step=0.2)
    wait_for("replica 1 sees replica 2's write", lambda: r.s[0].request(
        "GET", "/v1/services/after-restart").status_code == 200, 10, step=0.05)
    for i in (0, 1):
        wait_for(f"proxy {i + 1} routes it", lambda: r.proxy_get(
            i, f"after-restart.{DOMAIN}", token).status_code == 200, 10, step=0.05)
    assert r.s[0].request("POST", "/v1/services", json=service("after-restart-1")).status_code == 201
    for s in r.s:
        assert "store: lost the connection to PostgreSQL; reconnecting" in s.read_log()


def test_kill9_of_a_replica_during_a_write_stream_loses_no_acknowledged_write(replicas):
    r = replicas
    acked, failed, stop = [], [], threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            name = f"stream-{i}"
            try:
                resp = r.s[0].request("POST", "/v1/services", json=service(name))
                (acked if resp.status_code == 201 else failed).append((name, resp.status_code))
            except (requests.RequestException, AttributeError, TypeError) as e:
                failed.append((name, str(e)))
                if r.s[0].proc is None:
                    return
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        wait_for("20 acknowledged writes", lambda: len(acked) >= 20, 30, step=0.02)
        r.s[0].kill9()
    finally:
        stop.set()
        t.join()
    names = {x["metadata"]["name"] for x in r.s[1].request("GET", "/v1/services").json()["items"]}
    lost = [n for n, _ in acked if n not in names]
    print(f"\n{len(acked)} writes acknowledged before kill -9, {len(failed)} refused or cut; lost: {lost}")
    assert not lost
    r.s[0].start()


def test_killing_the_leader_hands_the_lease_over_and_a_paused_leaders_late_write_is_refused(replicas):
    r = replicas
    wait_for("a controller holds the lease", lambda: r.lease() is not None, LEASE_TTL_S + 2, step=0.2)
    first = r.leader()
    _, old_token = r.lease()
    r.s[first].kill9()
    killed = time.monotonic()
    took = wait_for("the other replica takes the lease", lambda: r.lease()[1] != old_token,
                    LEASE_TTL_S + STANDBY_POLL_S + 1, step=0.05)
    print(f"\nkill -9 of the leader: the other replica took the lease after {took:.2f} s (TTL {LEASE_TTL_S} s)")
    assert took <= LEASE_TTL_S + STANDBY_POLL_S
    other = 1 - first
    assert r.leader() == other
    assert "controller: holding the lease; this one reconciles" in r.s[other].read_log()
    r.s[first].start()
    assert time.monotonic() - killed < 60

    # pause the leader's api role past the TTL: the other takes the lease; once
    # resumed, the paused one's next write carries its old token and is refused
    leader = r.leader()
    _, paused_token = r.lease()
    log_before = len(r.s[leader].read_log())
    pid = r.s[leader].role_pid("api")
    os.kill(pid, signal.SIGSTOP)
    try:
        took = wait_for("the standby takes the paused leader's lease", lambda: r.lease()[1] != paused_token,
                        LEASE_TTL_S + STANDBY_POLL_S + 1, step=0.05)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert r.leader() == 1 - leader
    print(f"a paused leader's lease was taken after {took:.2f} s")
    refused = f'"fencingToken":"{paused_token}"'
    wait_for("the deposed leader's refused write is logged", lambda: refused in r.s[leader].read_log()[log_before:],
             10, step=0.1)
    line = [x for x in r.s[leader].read_log()[log_before:].splitlines() if refused in x][0]
    assert "another controller took the lease; this one stands by" in line and '"refused":' in line, line
    print(f"the resumed leader's write with fencing token {paused_token} was refused: {line}")
    assert r.s[leader].role_pid("api") == pid, "the paused role was resumed, not restarted"
    assert r.leader() == 1 - leader  # the deposed one did not take it back


def test_the_documented_example_runs(tmp_path):
    """docs/deployment.md "Several replicas", as written (on free ports)."""
    rc, out, err = run_documented("several-replicas", tmp_path, ports=None, env_extra={"CHECKOUT": str(ROOT)})
    logs = "".join((tmp_path / f"{m}.log").read_text(errors="replace")[-2000:]
                   for m in ("audit", "kms", "runner", "api1", "api2") if (tmp_path / f"{m}.log").exists())
    assert rc == 0, out + err + logs
    assert "the KMS is unsealed" in out and re.search(r"^devs\s", out, re.M), out
    assert re.search(r"^\S+\|\d+$", out, re.M), out  # the lease: holder|token
    for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:"):
        assert marker not in logs
