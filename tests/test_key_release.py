"""Key release end to end with sandbox evidence: challenge, evidence from the
runner (asked on the replica's channel) binding the nonce and a fresh public
key, release of a data key as a JWE that python cryptography opens; and every
refusal the issue names."""
import base64
import hashlib
import json
import os

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from conftest import manifest
from test_audit import all_entries, wait_for
from test_runner import ask as ask_runner, launch


def b64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def open_jwe(jwe, private_key):
    """RFC 7518 ECDH-ES (direct) + A256GCM, written from the RFC."""
    header_b64, enc_key, iv, ct, tag = jwe.split(".")
    header = json.loads(b64url(header_b64))
    assert header["alg"] == "ECDH-ES" and header["enc"] == "A256GCM" and enc_key == ""
    epk = header["epk"]
    curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}[epk["crv"]]
    peer = ec.EllipticCurvePublicNumbers(int.from_bytes(b64url(epk["x"]), "big"),
                                         int.from_bytes(b64url(epk["y"]), "big"), curve).public_key()
    z = private_key.exchange(ec.ECDH(), peer)
    other = (len(b"A256GCM")).to_bytes(4, "big") + b"A256GCM" + b"\0" * 8 + (256).to_bytes(4, "big")
    key = hashlib.sha256((1).to_bytes(4, "big") + z + other).digest()
    return AESGCM(key).decrypt(b64url(iv), b64url(ct) + b64url(tag), header_b64.encode())


@pytest.fixture
def setup(server, tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "enclave.yaml").write_text('command: ["/bin/sleep", "600"]\n')
    (bundle / "app.py").write_text("print('model')\n")
    os.chmod(bundle, 0o755)
    launched, _ = launch(server, "model", bundle)  # an Enclave: its replica model-1 asks on its own channel
    pcr0 = launched["pcrs"]["0"]
    docs = [manifest("AttestationPolicy", "enclaves", {"types": ["sandbox"], "allowSandbox": True,
                                                        "maxAgeSeconds": 300, "referenceValues": {"pcr0": [pcr0]}}),
            manifest("AttestationPolicy", "hardware-only", {"types": ["sandbox"], "allowSandbox": False}),
            manifest("AttestationPolicy", "other-code", {"types": ["sandbox"], "allowSandbox": True,
                                                          "referenceValues": {"pcr0": ["00" * 48]}}),
            manifest("Key", "model-key", {"purpose": "encrypt", "release": {"attestationPolicy": "enclaves"}}),
            manifest("Key", "hw-key", {"purpose": "encrypt", "release": {"attestationPolicy": "hardware-only"}}),
            manifest("Key", "other-key", {"purpose": "encrypt", "release": {"attestationPolicy": "other-code"}}),
            manifest("Key", "plain-key", {"purpose": "encrypt"})]
    r = server.request("POST", "/v1/apply", json={"items": docs})
    assert r.status_code == 200, r.text
    return server, bundle


def attempt(server, bundle, key_name, private_key=None, evidence_key=None, nonce=None):
    private_key = private_key or ec.generate_private_key(ec.SECP256R1())
    der = private_key.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
    if nonce is None:
        nonce = server.request("POST", "/v1/attest/challenge").json()["nonce"]
    bound = evidence_key if evidence_key is not None else der
    status, ev = ask_runner(server, "model-1", {"nonce": nonce, "public_key": bound.hex()})
    assert status == 200
    r = server.request("POST", f"/v1/kms/keys/{key_name}/release",
                       json={"type": "sandbox", "evidence": ev["document"], "publicKey": base64.b64encode(der).decode()})
    return r, private_key, nonce


def test_matching_enclave_gets_a_data_key_it_can_open(setup):
    server, bundle = setup
    r, priv, _ = attempt(server, bundle, "model-key")
    assert r.status_code == 200, r.text
    secret = json.loads(open_jwe(r.json()["jwe"], priv))
    assert secret["key"] == "model-key" and len(base64.b64decode(secret["plaintext"])) == 32
    # the wrapped copy decrypts through the KMS to the same data key
    d = server.request("POST", "/v1/kms/decrypt", json={"ciphertext": secret["ciphertext"]})
    assert d.status_code == 200, d.text
    assert d.json()["plaintext"] == secret["plaintext"]
    releases = wait_for(lambda: [e for e in all_entries(server) if e["action"] == "kms.release"])
    assert releases[-1]["outcome"] == "success" and releases[-1]["resource"] == {"kind": "Key", "name": "model-key"}
    assert secret["plaintext"] not in json.dumps(all_entries(server)) and secret["plaintext"] not in server.read_log()


def test_a_challenge_is_good_once(setup):
    server, bundle = setup
    r, _, nonce = attempt(server, bundle, "model-key")
    assert r.status_code == 200
    r, _, _ = attempt(server, bundle, "model-key", nonce=nonce)
    assert r.status_code == 403 and "challenge" in r.json()["error"]["message"]
    denied = wait_for(lambda: [e for e in all_entries(server) if e["action"] == "kms.release"
                               and e["outcome"] == "denied"])
    assert "challenge" in denied[-1]["details"]["reason"]


def test_unissued_nonce_is_refused(setup):
    server, bundle = setup
    r, _, _ = attempt(server, bundle, "model-key", nonce=os.urandom(32).hex())
    assert r.status_code == 403 and "challenge" in r.json()["error"]["message"]


def test_other_code_is_refused(setup):
    server, bundle = setup
    r, _, _ = attempt(server, bundle, "other-key")
    assert r.status_code == 403 and "reference values" in r.json()["error"]["message"]


def test_sandbox_evidence_refused_where_the_policy_wants_hardware(setup):
    server, bundle = setup
    r, _, _ = attempt(server, bundle, "hw-key")
    assert r.status_code == 403 and "sandbox" in r.json()["error"]["message"]


def test_evidence_for_another_public_key_is_refused(setup):
    server, bundle = setup
    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    r, _, _ = attempt(server, bundle, "model-key", evidence_key=other)
    assert r.status_code == 403 and "another public key" in r.json()["error"]["message"]


def test_keys_without_a_release_policy_are_never_released(setup):
    server, bundle = setup
    r, _, _ = attempt(server, bundle, "plain-key")
    assert r.status_code == 403 and "attestationPolicy" in r.json()["error"]["message"]
