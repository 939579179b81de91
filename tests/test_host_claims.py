"""A host routes to one Service, whatever the interleaving of the writes that
claim it (src/api/authz-write.c, the store guard of src/api/handlers.c):
racing writers that each claim the same new host for a different Service,
through the real API on loopback, in rounds. Each round exactly one wins and
every other gets the 409 naming the winner; the Service list then shows one
owner of the host. The writers mix the routes (create, apply, an update that
adds the host) and the two ways of claiming (spec.hosts, and a Service's own
name under the cluster domain). The same across two API replicas on one
PostgreSQL is in tests/test_replicas.py."""
import threading
import time

from conftest import audit_entries, manifest

DOMAIN = "localhost"  # cloisterd --dev's default --domain
UPSTREAM = "http://127.0.0.1:9"
RACERS = 8
ROUNDS = 12
ROUND_TIMEOUT_S = 60


def claimants(prefix, round_, host, n):
    """The N writes of round ROUND_ that each claim HOST, for Services named
    after PREFIX: (name, method, path, body)."""
    out = []
    for i in range(n):
        name, keeper = f"{prefix}-{round_}-{i}", f"{prefix}-keeper-{i}"
        if i == 0:  # the Service whose own name under the domain is HOST
            name = host.removesuffix(f".{DOMAIN}")
            out.append((name, "POST", "/v1/services", manifest("Service", name, {"upstream": {"url": UPSTREAM}})))
            continue
        doc = manifest("Service", name if i % 3 else keeper, {"upstream": {"url": UPSTREAM}, "hosts": [host]})
        if i % 3 == 0:  # an update of a Service that exists, adding the host
            out.append((keeper, "PUT", f"/v1/services/{keeper}", doc))
        elif i % 3 == 1:
            out.append((name, "POST", "/v1/services", doc))
        else:
            out.append((name, "POST", "/v1/apply", {"items": [doc]}))
    return out


def race(send, writes):
    """Sends WRITES (from claimants()) at once, SEND(i, method, path, body)
    making each request (I its index): {name: response}."""
    barrier = threading.Barrier(len(writes), timeout=ROUND_TIMEOUT_S)
    got = {}

    def one(i, name, method, path, body):
        barrier.wait()
        got[name] = send(i, method, path, body)

    threads = [threading.Thread(target=one, args=(i, *w)) for i, w in enumerate(writes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(ROUND_TIMEOUT_S)
    assert not any(t.is_alive() for t in threads), "a write did not finish in time"
    return got


def owners(services, host):
    """The Services of the list SERVICES that claim HOST."""
    return sorted(s["metadata"]["name"] for s in services
                  if host in s["spec"].get("hosts", []) or f"{s['metadata']['name']}.{DOMAIN}" == host)


def check_round(got, services, host):
    """Exactly one write of the round won; each other got the 409 naming it;
    the listed Services show it the only owner of HOST. Returns the winner."""
    won = [name for name, r in got.items() if r.status_code in (200, 201)]
    assert len(won) == 1, {name: (r.status_code, r.text[:200]) for name, r in got.items()}
    winner = won[0]
    expected = (f"host {host} is already claimed by Service {winner}; a host routes to one Service "
                "(remove it there first)")
    for name, r in got.items():
        if name != winner:
            assert r.status_code == 409, (name, r.status_code, r.text)
            assert r.json()["error"]["message"] == expected, (name, r.text)
    assert owners(services, host) == [winner]
    return winner


def race_rounds(servers, prefix):
    """ROUNDS rounds of RACERS writers on SERVERS (write I through server I
    modulo their number). Returns how often each racer index won, and the
    refused writes: {(verb, name): the 409's message}."""
    for i in range(3, RACERS, 3):
        keeper = manifest("Service", f"{prefix}-keeper-{i}", {"upstream": {"url": UPSTREAM}})
        r = servers[0].request("POST", "/v1/apply", json={"items": [keeper]})
        assert r.status_code == 200, r.text
    wins, refused = {}, {}
    deadline = time.monotonic() + ROUNDS * ROUND_TIMEOUT_S
    for round_ in range(ROUNDS):
        assert time.monotonic() < deadline
        host = f"{prefix}{round_}.{DOMAIN}"
        writes = claimants(prefix, round_, host, RACERS)
        got = race(lambda i, method, path, body: servers[i % len(servers)].request(method, path, json=body), writes)
        services = servers[round_ % len(servers)].request("GET", "/v1/services").json()["items"]
        winner = check_round(got, services, host)
        index = [w[0] for w in writes].index(winner)
        wins[index] = wins.get(index, 0) + 1
        refused |= {("update" if method == "PUT" else "create", name): got[name].json()["error"]["message"]
                    for name, method, _, _ in writes if name != winner}
    return wins, refused


def test_racing_writers_claiming_one_host_exactly_one_wins(server):
    wins, refused = race_rounds([server], "contested")
    print(f"winners by racer index over {ROUNDS} rounds: {dict(sorted(wins.items()))}")
    # each refusal is an audit entry naming the write, whichever check made it
    deadline = time.monotonic() + 15
    while True:  # entries reach the audit role asynchronously
        audited = {(e["details"]["api"]["verb"], e["details"]["api"]["name"]): e["details"]["reason"]
                   for e in audit_entries(server, "api.access")
                   if e["outcome"] == "denied" and e["details"].get("status") == 409}
        if all(audited.get(k) == v for k, v in refused.items()):
            break
        assert time.monotonic() < deadline, {k: v for k, v in refused.items() if audited.get(k) != v}
        time.sleep(0.2)
