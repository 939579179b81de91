"""Property test of the API's escalation rules: random policies grant an
attacker a random subset of the write and meta verbs (update, create, bind,
use, token, impersonate ...), the attacker then tries random sequences of
calls with every identity it holds, and at the end no identity it holds may
do anything the policies did not grant, as `cloister policy check` (and the
what-if API behind it) decides with the store as the attacker left it.

The oracle over-approximates what the grants allow (Kubernetes RBAC's
rule): an identity may hold the policies attached to it at the start, every
policy the attacker may `bind`, the policies of every Group it may `bind`,
and everything of each user it may `impersonate` or whose credential's
token it may mint, to a fixpoint. Whatever the server lets the attacker end
up with must stay inside that set. The policies are allow-only, so nothing
the attacker removes can widen a right."""
import json
import random

import pytest

from conftest import manifest, run_cli

SEEDS = range(20)
STEPS = 24
# rights that only read or write ordinary objects: what grants hand out
TARGET = [("get", "Secret"), ("list", "Secret"), ("delete", "Service"), ("create", "Service"),
          ("encrypt", "Key"), ("decrypt", "Key"), ("get", "Session"), ("get", "AuditLog")]
ALL = "*"  # a policy that allows everything (cloister-admins)


def cel_rule(verb, kind, name):
    cond = f'ctx.request.api.verb == "{verb}" && ctx.request.api.kind == "{kind}"'
    if name is not None:
        cond += f' && ctx.request.api.name == "{name}"'
    return {"effect": "allow", "priority": 0, "condition": {"match": cond}}


class Tenant:
    """One seed's objects, named with the seed so seeds do not meet, and the
    rules of each policy as (verb, kind, name-or-None) triples."""

    def __init__(self, seed):
        self.rng = random.Random(seed)
        s = f"p{seed}"
        self.attacker = f"{s}-mallory"
        self.grants = [f"{s}-grant-{i}" for i in range(4)]
        self.teams = [f"{s}-team-{i}" for i in range(3)]
        self.victims = [f"{s}-victim-{i}" for i in range(2)]
        self.rules = {"cloister-admins": ALL}
        for g in self.grants:
            self.rules[g] = [(v, k, None) for v, k in self.rng.sample(TARGET, self.rng.randint(1, 3))]
        self.group_policies = {t: [self.grants[i]] for i, t in enumerate(self.teams)}
        self.group_policies["admins"] = ["cloister-admins"]
        self.user_groups = {v: self.rng.sample(self.teams, self.rng.randint(0, 2)) for v in self.victims}
        self.user_groups["admin"] = ["admins"]
        self.user_policies = {v: [] for v in self.victims}
        self.user_policies["admin"] = []
        self.credentials = {f"{v}-cli": v for v in self.victims}
        self.credentials["admin-bootstrap"] = "admin"
        self.credentials[f"{self.attacker}-cli"] = self.attacker
        # the attacker's own rights: a random handful of write and meta verbs
        own = f"{self.attacker}-rights"
        pick = lambda xs: self.rng.choice(xs)  # noqa: E731
        candidates = [
            ("update", "User", self.attacker), ("update", "User", None), ("update", "Group", None),
            ("update", "Group", pick(self.teams)), ("create", "Group", None), ("create", "User", None),
            ("create", "Credential", None), ("update", "Credential", None),
            ("bind", "Policy", pick(self.grants)), ("bind", "Policy", pick(self.grants)),
            ("bind", "Group", pick(self.teams)), ("impersonate", "User", pick(self.victims)),
            ("token", "Credential", f"{pick(self.victims)}-cli"), ("token", "Credential", None),
            ("token", "Credential", f"{self.attacker}-cli"), ("get", "User", None),
        ]
        # wide rights are rare: they make the attacker an admin by design
        weights = [3, 2, 2, 3, 3, 3, 3, 2, 3, 3, 3, 2, 2, 1, 3, 1]
        chosen = set()
        while len(chosen) < self.rng.randint(3, 7):
            chosen.add(self.rng.choices(candidates, weights)[0])
        self.rules[own] = sorted(chosen, key=str)
        self.user_policies[self.attacker] = [own]
        self.user_groups[self.attacker] = self.rng.sample(self.teams, self.rng.randint(0, 1))

    def manifests(self):
        docs = []
        for p, rules in self.rules.items():
            if p != "cloister-admins":
                docs.append(manifest("Policy", p, {"rules": [cel_rule(*r) for r in rules]}))
        for g in self.teams:
            docs.append(manifest("Group", g, {"policies": self.group_policies[g]}))
        for u in self.victims + [self.attacker]:
            docs.append(manifest("User", u, {"type": "human", "groups": self.user_groups[u],
                                             "policies": self.user_policies[u]}))
        for c, u in self.credentials.items():
            if u != "admin":
                docs.append(manifest("Credential", c, {"user": u, "type": "authToken"}))
        return docs

    # ---- the oracle ----

    def derivable(self):
        """(omnipotent, rules): every right the attacker's identities could
        come to hold by the grants, over-approximated to a fixpoint."""
        identities = {self.attacker}
        policies = set()
        while True:
            for u in identities:
                policies.update(self.user_policies.get(u, []))
                for g in self.user_groups.get(u, []):
                    policies.update(self.group_policies.get(g, []))
            if any(self.rules.get(p) == ALL for p in policies):
                return True, []
            rules = [r for p in policies for r in self.rules.get(p, [])]
            if any(v in ("create", "update") and k == "Policy" for v, k, _ in rules):
                return True, []  # a right to write policies is every right
            grew = False
            for v, k, n in rules:
                if (v, k) == ("bind", "Policy"):
                    new = {p for p in self.rules if n is None or p == n} - policies
                    if new:
                        policies |= new
                        grew = True
                elif (v, k) == ("bind", "Group"):
                    for g, ps in self.group_policies.items():
                        if (n is None or g == n) and not set(ps) <= policies:
                            policies |= set(ps)
                            grew = True
                elif (v, k) == ("impersonate", "User"):
                    new = {u for u in self.user_groups if n is None or u == n} - identities
                    if new:
                        identities |= new
                        grew = True
                elif (v, k) == ("token", "Credential"):
                    new = {u for c, u in self.credentials.items() if n is None or c == n} - identities
                    if new:
                        identities |= new
                        grew = True
            if not grew:
                return False, rules

    def probes(self):
        out = [(v, k, "probe") for v, k in TARGET]
        out += [("bind", "Policy", p) for p in self.grants + ["cloister-admins"]]
        out += [("bind", "Group", g) for g in self.teams + ["admins"]]
        out += [("impersonate", "User", u) for u in self.victims + ["admin"]]
        out += [("token", "Credential", c) for c in self.credentials]
        out += [("update", "Policy", "cloister-admins"), ("delete", "Group", "admins")]
        return out


def allowed_by(rules, verb, kind, name):
    return any(v == verb and k == kind and n in (None, name) for v, k, n in rules)


def mint(s, credential, token):
    """A session token for CREDENTIAL minted with TOKEN's rights, or None."""
    r = s.request("POST", "/v1/tokens", token=token, json={"credential": credential})
    if r.status_code != 201:
        return None
    return r.json()["token"]


def put_spec(s, token, kind, plural, name, change, via_apply):
    """Reads NAME as admin (the attacker knows the names), changes its spec
    with CHANGE and writes it back with TOKEN, by PUT or by apply."""
    cur = s.request("GET", f"/v1/{plural}/{name}")
    if cur.status_code != 200:
        return cur.status_code
    spec = cur.json()["spec"]
    change(spec)
    doc = manifest(kind, name, spec)
    if via_apply:
        return s.request("POST", "/v1/apply", token=token, json={"items": [doc]}).status_code
    return s.request("PUT", f"/v1/{plural}/{name}", token=token, json=doc).status_code


def attack(s, t, held):
    """One random step of the attacker with one of the tokens it holds; a
    token it mints is added to HELD. Nothing here updates T: the oracle
    speaks of the grants the attacker started with."""
    rng = t.rng
    token = rng.choice(held)
    via_apply = rng.random() < 0.5
    # an attacker aims high: at itself, at the admins' group and policy
    pol = "cloister-admins" if rng.random() < 0.4 else rng.choice(t.grants)
    grp = "admins" if rng.random() < 0.4 else rng.choice(t.teams)
    target = t.attacker if rng.random() < 0.5 else rng.choice(t.victims + ["admin"])
    step = rng.randrange(8)
    if step == 0:
        put_spec(s, token, "User", "users", target, lambda sp: sp.setdefault("groups", []).append(grp), via_apply)
    elif step == 1:
        put_spec(s, token, "User", "users", target, lambda sp: sp.setdefault("policies", []).append(pol), via_apply)
    elif step == 2:
        put_spec(s, token, "Group", "groups", grp, lambda sp: sp.setdefault("policies", []).append(pol), via_apply)
    elif step == 3:
        g = f"{t.attacker}-g{rng.randrange(1000)}"
        s.request("POST", "/v1/groups", token=token, json=manifest("Group", g, {"policies": [pol]}))
    elif step == 4:
        c = f"{t.attacker}-c{rng.randrange(1000)}"
        spec = {"user": target, "type": "authToken"}
        if rng.random() < 0.5:
            spec["policies"] = [pol]
        if s.request("POST", "/v1/credentials", token=token, json=manifest("Credential", c, spec)).status_code == 201:
            t.credentials[c] = target
            new = mint(s, c, token)
            if new:
                held.append(new)
    elif step == 5:
        new = mint(s, rng.choice(sorted(t.credentials)), token)
        if new:
            held.append(new)
    elif step == 6:
        # point a credential (the attacker's own, whose token it holds) at another user
        def repoint(sp):
            sp["user"] = target
            if rng.random() < 0.5:
                sp["policies"] = [pol]
        put_spec(s, token, "Credential", "credentials", f"{t.attacker}-cli", repoint, via_apply)
    else:
        u = f"{t.attacker}-u{rng.randrange(1000)}"
        s.request("POST", "/v1/users", token=token,
                  json=manifest("User", u, {"type": "human", "groups": [grp], "policies": [pol]}))


@pytest.mark.parametrize("seed", SEEDS)
def test_no_sequence_of_allowed_calls_yields_an_ungranted_right(shared_server, seed):
    s = shared_server
    assert s.request("GET", "/v1/whoami").status_code == 200, \
        "the bootstrap admin's token no longer works: an earlier seed's attacker revoked it"
    t = Tenant(seed)
    r = s.request("POST", "/v1/apply", json={"items": t.manifests()})
    assert r.status_code == 200, r.text
    omnipotent, rules = t.derivable()  # from the grants, before any attack
    if omnipotent:  # (it could then legitimately revoke the admin token the other seeds use)
        pytest.skip("the grants of this seed make the attacker an admin by design")
    own = mint(s, f"{t.attacker}-cli", None)  # the admin hands the attacker its own token
    assert own
    held = [own]
    for _ in range(STEPS):
        attack(s, t, held)

    # who each held token is now, as the server resolves it
    identities = set()
    for token in held:
        w = s.request("GET", "/v1/whoami", token=token)
        if w.status_code == 200:
            identities.add((w.json()["user"], w.json().get("credential")))
    assert identities, "the attacker holds no working token at all"
    escalations = []
    for user, cred in sorted(identities, key=str):
        for verb, kind, name in t.probes():
            body = {"user": user, "api": {"verb": verb, "kind": kind, "name": name}}
            if cred:
                body["credential"] = cred
            d = s.request("POST", "/v1/policy/check", json=body)
            assert d.status_code == 200, d.text
            if d.json()["allow"] and not allowed_by(rules, verb, kind, name):
                escalations.append((user, cred, verb, kind, name, d.json()["policy"], d.json()["rule"]))
    assert not escalations, (f"seed {seed}: rights no policy grants:\n" + "\n".join(map(str, escalations)) +
                             f"\nattacker rules: {t.rules[t.attacker + '-rights']}")


def test_the_cli_decides_as_the_what_if_api(shared_server):
    """`cloister policy check` is the oracle the property test uses through
    the API: the two agree on an allowed and a denied API call."""
    s = shared_server
    t = Tenant(100)
    assert s.request("POST", "/v1/apply", json={"items": t.manifests()}).status_code == 200
    cfg = s.data_dir.parent / "cli-config"
    assert run_cli(s, "login", "--token", s.token, config_home=cfg).returncode == 0
    for verb, kind, name in t.probes()[:12]:
        api = s.request("POST", "/v1/policy/check",
                        json={"user": t.attacker, "api": {"verb": verb, "kind": kind, "name": name}}).json()
        p = run_cli(s, "policy", "check", "--user", t.attacker, "--verb", verb, "--kind", kind, "--name", name,
                    "-o", "json", config_home=cfg)
        assert p.returncode == (0 if api["allow"] else 1), p.stderr
        assert json.loads(p.stdout)["allow"] == api["allow"]
