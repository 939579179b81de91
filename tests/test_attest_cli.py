"""cloister attest verify on real TEE evidence (shared/vectors), offline:
exit 0 only when the evidence verifies, the DESIGN.md JSON document, and an
independent check of the SEV-SNP signature with python cryptography."""
import base64
import json
import os
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from conftest import CLOISTER, ROOT, sanitizer_env

VECTORS = Path(os.environ.get("CLOISTER_VECTORS", ROOT.parent / "shared" / "vectors")) / "attestation"
NITRO = VECTORS / "nitro" / "nitro_attestation.b64"
NITRO_AT = "2024-09-07T14:37:39Z"
SNP, VCEK = VECTORS / "sev-snp" / "test-report.bin", VECTORS / "sev-snp" / "test-vcek.der"
TDX = VECTORS / "tdx" / "tdx_prod_quote_SPR_E4.dat"
TDX_AT = "2023-07-01T01:00:00Z"


def attest(*args):
    r = subprocess.run([str(CLOISTER), "attest", "verify", *args], capture_output=True, text=True,
                       env=sanitizer_env(), timeout=60)
    doc = json.loads(r.stdout) if r.stdout.startswith("{") else None
    return r.returncode, doc, r.stderr


def test_nitro_verifies_at_its_time_with_the_design_claims():
    rc, doc, err = attest("--type", "nitro", "--evidence", str(NITRO), "--at", NITRO_AT, "-o", "json")
    assert rc == 0, err
    assert set(doc) == {"verified", "type", "claims"} and doc["verified"] is True and doc["type"] == "nitro"
    c = doc["claims"]
    assert c["module_id"] == "i-0a22e5c5f24d22174-enc0191cceb4289903f"
    assert c["pcrs"]["0"].startswith("e72a46ca80a260fb044a1254") and len(c["pcrs"]) == 16
    assert c["timestamp"] == 1725719859545
    assert {"digest", "user_data", "nonce", "public_key"} <= set(c)


def test_nitro_raw_bytes_verify_like_base64(tmp_path):
    raw = tmp_path / "nitro.cbor"
    raw.write_bytes(base64.b64decode(NITRO.read_text()))
    rc, doc, _ = attest("--type", "nitro", "--evidence", str(raw), "--at", NITRO_AT, "-o", "json")
    assert rc == 0 and doc["verified"]


def test_nitro_is_refused_once_its_certificate_expired():
    rc, doc, err = attest("--type", "nitro", "--evidence", str(NITRO), "-o", "json")
    assert rc == 1
    assert doc == {"verified": False, "type": "nitro", "claims": {}, "error": doc["error"]}
    assert "expired" in doc["error"] and "expired" in err


def test_nitro_with_one_flipped_byte_is_refused(tmp_path):
    raw = bytearray(base64.b64decode(NITRO.read_text()))
    raw[len(raw) // 2] ^= 0x01
    bad = tmp_path / "bad.cbor"
    bad.write_bytes(bytes(raw))
    rc, doc, _ = attest("--type", "nitro", "--evidence", str(bad), "--at", NITRO_AT, "-o", "json")
    assert rc == 1 and doc["verified"] is False


def test_sev_snp_verifies_with_der_or_pem_vcek(tmp_path):
    rc, doc, err = attest("--type", "sev-snp", "--evidence", str(SNP), "--cert", str(VCEK), "-o", "json")
    assert rc == 0, err
    c = doc["claims"]
    assert c["version"] == 2 and len(c["measurement"]) == 96 and c["debug"] in (True, False)
    assert {"report_data", "host_data", "policy", "chip_id", "reported_tcb"} <= set(c)
    pem = tmp_path / "vcek.pem"
    subprocess.run(["openssl", "x509", "-inform", "der", "-in", str(VCEK), "-out", str(pem)], check=True)
    rc, doc2, _ = attest("--type", "sev-snp", "--evidence", str(SNP), "--cert", str(pem), "-o", "json")
    assert rc == 0 and doc2 == doc


def test_sev_snp_signature_checks_out_independently():
    """python cryptography agrees: ECDSA P-384/SHA-384 over bytes 0..0x29F,
    r and s little-endian at 0x2A0 and 0x2E8, by the VCEK's key."""
    report = SNP.read_bytes()
    vcek = x509.load_der_x509_certificate(VCEK.read_bytes())
    r = int.from_bytes(report[0x2A0:0x2A0 + 72], "little")
    s = int.from_bytes(report[0x2E8:0x2E8 + 72], "little")
    vcek.public_key().verify(encode_dss_signature(r, s), report[:0x2A0], ec.ECDSA(hashes.SHA384()))
    rc, doc, _ = attest("--type", "sev-snp", "--evidence", str(SNP), "--cert", str(VCEK), "-o", "json")
    assert rc == 0
    assert doc["claims"]["measurement"] == report[0x90:0x90 + 48].hex()


def test_sev_snp_tampered_report_is_refused(tmp_path):
    report = bytearray(SNP.read_bytes())
    report[0x90] ^= 0x80  # the measurement
    bad = tmp_path / "report.bin"
    bad.write_bytes(bytes(report))
    rc, doc, _ = attest("--type", "sev-snp", "--evidence", str(bad), "--cert", str(VCEK), "-o", "json")
    assert rc == 1 and "signature" in doc["error"]


def test_tdx_verifies_with_crls_and_fails_with_wrong_roots():
    crls = ["--crl", str(VECTORS / "tdx" / "pckcrl"), "--crl", str(VECTORS / "tdx" / "rootcrl.der")]
    rc, doc, err = attest("--type", "tdx", "--evidence", str(TDX), "--at", TDX_AT, *crls, "-o", "json")
    assert rc == 0, err
    assert len(doc["claims"]["mr_td"]) == 96 and doc["claims"]["version"] == 4
    rc, doc, _ = attest("--type", "tdx", "--evidence", str(TDX), "--at", TDX_AT,
                        "--roots", str(VECTORS / "nitro" / "aws_nitro_root_g1.pem"), "-o", "json")
    assert rc == 1 and doc["verified"] is False


@pytest.mark.parametrize("args,why", [
    (["--type", "sgx", "--evidence", "x"], "--type"),
    (["--type", "nitro"], "--evidence"),
    (["--type", "sandbox", "--evidence", "x"], "--roots"),
    (["--type", "sev-snp", "--evidence", "x"], "--cert"),
    (["--type", "nitro", "--evidence", "x", "--at", "yesterday"], "RFC 3339"),
])
def test_usage_errors_exit_2(args, why):
    rc, _, err = attest(*args)
    assert rc == 2 and why in err


def test_text_output_names_the_type_and_claims():
    r = subprocess.run([str(CLOISTER), "attest", "verify", "--type", "nitro", "--evidence", str(NITRO), "--at", NITRO_AT],
                       capture_output=True, text=True, env=sanitizer_env(), timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("verified nitro evidence")
    assert "module_id" in r.stdout


# ---- claims computed independently (cbor2, struct offsets), iterating the vector folders ----

import cbor2  # noqa: E402

TIMES = {"nitro": NITRO_AT, "tdx": TDX_AT}  # the documented verification times (vectors README)


def evidence_files():
    """(type, evidence, extra CLI args) for every evidence file under the vectors' attestation folders."""
    for folder in sorted(p for p in VECTORS.iterdir() if p.is_dir()):
        kind = folder.name
        for f in sorted(folder.iterdir()):
            if kind == "nitro" and f.suffix == ".b64":
                yield kind, f, []
            elif kind == "sev-snp" and f.suffix == ".bin" and f.stat().st_size == 1184:
                certs = [c for c in folder.glob("*.der") if "vcek" in c.name or "vlek" in c.name]
                yield kind, f, ["--cert", str(certs[0])]
            elif kind == "tdx" and f.suffix == ".dat":
                yield kind, f, []


def independent_claims(kind, path):
    data = path.read_bytes()
    if kind == "nitro":
        cose = cbor2.loads(base64.b64decode(data))
        payload = cbor2.loads(cose[2])
        hexor = lambda v: v.hex() if v is not None else None  # noqa: E731
        return {"module_id": payload["module_id"], "timestamp": payload["timestamp"],
                "pcrs": {str(k): v.hex() for k, v in payload["pcrs"].items()},
                "nonce": hexor(payload.get("nonce")), "user_data": hexor(payload.get("user_data")),
                "public_key": hexor(payload.get("public_key"))}
    if kind == "sev-snp":
        return {"version": int.from_bytes(data[0:4], "little"), "measurement": data[0x90:0xC0].hex(),
                "report_data": data[0x50:0x90].hex(), "host_data": data[0xC0:0xE0].hex(),
                "chip_id": data[0x1A0:0x1E0].hex(),
                "debug": bool(int.from_bytes(data[8:16], "little") >> 19 & 1)}
    body = 48  # TDX quote v4: the TD report body follows the 48-byte header
    return {"version": int.from_bytes(data[0:2], "little"), "tee_tcb_svn": data[body:body + 16].hex(),
            "mr_td": data[body + 136:body + 184].hex(), "mr_config_id": data[body + 184:body + 232].hex(),
            **{f"rtmr{i}": data[body + 328 + 48 * i:body + 376 + 48 * i].hex() for i in range(4)},
            "report_data": data[body + 520:body + 584].hex()}


@pytest.mark.parametrize("kind,path,extra", list(evidence_files()), ids=lambda v: getattr(v, "name", str(v)))
def test_claims_match_independent_parsing(kind, path, extra):
    at = ["--at", TIMES[kind]] if kind in TIMES else []
    rc, doc, err = attest("--type", kind, "--evidence", str(path), *extra, *at, "-o", "json")
    assert rc == 0, err
    expected = independent_claims(kind, path)
    got = {k: doc["claims"].get(k) for k in expected}
    assert got == expected


def test_every_vector_folder_has_evidence():
    kinds = {k for k, _, _ in evidence_files()}
    assert kinds == {p.name for p in VECTORS.iterdir() if p.is_dir()}
