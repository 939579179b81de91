"""The job engine alone (docs/analytics.md "The job engine"): the shipped
bundle's `cloister-job --manifest FILE` on real age files, one made by the
`age` tool and one by `cloister age encrypt`, each file key unwrapped with
the owner's identity by tests/age_file_key.py (an independent implementation
of the X25519 stanza, in Python). The result decrypts with the `age` tool
and equals `sqlite3` running the same query on the plaintext CSVs; every
refused query class ends with a clear error, exit 1 and no output file."""
import hashlib
import json
import random
import shutil
import subprocess

import pytest

from age_file_key import unwrap_file_key
from conftest import BUILD, CLOISTER, sanitizer_env

AGE = shutil.which("age")
AGE_KEYGEN = shutil.which("age-keygen")
SQLITE3 = shutil.which("sqlite3")
pytestmark = pytest.mark.skipif(not AGE or not AGE_KEYGEN or not SQLITE3,
                                reason="the age tool and sqlite3 are needed (scripts/setup.sh)")

BUNDLE = BUILD / "src" / "job" / "cloister-job-bundle"
ENGINE = BUILD / "src" / "job" / "cloister-job"  # the same sources as the bundle's, sanitized in a test build

JOIN = ("SELECT p.city, count(*) AS visits, sum(v.cost) AS total, round(avg(p.age), 2) AS mean_age "
        "FROM patients p JOIN visits v ON v.patient = p.id GROUP BY p.city ORDER BY total DESC, p.city")


def keygen(path):
    subprocess.run([AGE_KEYGEN, "-o", str(path)], check=True, capture_output=True)
    return subprocess.run([AGE_KEYGEN, "-y", str(path)], check=True, capture_output=True, text=True).stdout.strip()


def csv_field(s):
    return '"' + s.replace('"', '""') + '"' if any(c in s for c in ',"\r\n') else s


@pytest.fixture
def job(tmp_path):
    """Two datasets (patients by the age tool, visits by cloister age encrypt)
    for the owner, their file keys, a reader's identity; returns a namespace."""
    class Job:
        pass
    j = Job()
    j.dir = tmp_path
    j.owner, j.reader, j.stranger = tmp_path / "owner.txt", tmp_path / "reader.txt", tmp_path / "stranger.txt"
    j.owner_r, j.reader_r, _ = keygen(j.owner), keygen(j.reader), keygen(j.stranger)
    rnd = random.Random(17)
    cities = ["Lyon", "Paris", "Nice", 'Saint-Denis, "Réunion"', "Multi\nLine"]
    patients = ["id,city,age"] + [f"{i},{csv_field(rnd.choice(cities))},{rnd.randint(18, 90)}" for i in range(1, 4001)]
    visits = ["id,patient,cost"] + [f"{i},{rnd.randint(1, 4200)},{rnd.randint(100, 99999) / 100}" for i in range(1, 9001)]
    j.patients_csv, j.visits_csv = tmp_path / "patients.csv", tmp_path / "visits.csv"
    j.patients_csv.write_text("\r\n".join(patients) + "\r\n")
    j.visits_csv.write_text("\n".join(visits))  # LF, and no line end at the very end
    j.patients_age, j.visits_age = tmp_path / "patients.age", tmp_path / "visits.age"
    subprocess.run([AGE, "-r", j.owner_r, "-o", str(j.patients_age), str(j.patients_csv)], check=True)
    subprocess.run([str(CLOISTER), "age", "encrypt", "-r", j.owner_r, "-o", str(j.visits_age), str(j.visits_csv)],
                   check=True, env=sanitizer_env())
    for name, f in (("patients", j.patients_age), ("visits", j.visits_age)):
        (tmp_path / f"{name}.key").write_bytes(unwrap_file_key(f, j.owner))
    j.output = tmp_path / "result.age"
    return j


def manifest(j, query, **over):
    m = {
        "query": query,
        "inputs": [
            {"name": "patients", "table": "patients",
             "schema": [{"name": "id", "type": "integer"}, {"name": "city", "type": "text"},
                        {"name": "age", "type": "integer"}],
             "ciphertext": str(j.patients_age), "fileKey": str(j.dir / "patients.key"),
             "sha256": hashlib.sha256(j.patients_age.read_bytes()).hexdigest()},
            {"name": "visits", "table": "visits",
             "schema": [{"name": "id", "type": "integer"}, {"name": "patient", "type": "integer"},
                        {"name": "cost", "type": "real"}],
             "ciphertext": str(j.visits_age), "fileKey": str(j.dir / "visits.key"),
             "sha256": hashlib.sha256(j.visits_age.read_bytes()).hexdigest()},
        ],
        "recipients": [j.reader_r, j.owner_r],
        "output": str(j.output),
        "limits": {"memoryMiB": 256, "seconds": 30, "rows": 10000},
    }
    m.update(over)
    path = j.dir / "manifest.json"
    path.write_text(json.dumps(m))
    return path


def engine(path, timeout=60, executable=ENGINE):
    p = subprocess.run([str(executable), "--manifest", str(path)], capture_output=True, text=True, timeout=timeout,
                       env=sanitizer_env())
    lines = p.stdout.splitlines()
    assert len(lines) == 1, (p.stdout, p.stderr)
    assert "ERROR: AddressSanitizer" not in p.stderr and "runtime error:" not in p.stderr, p.stderr
    return p.returncode, json.loads(lines[0])


def sqlite3_reference(j, query):
    """sqlite3 importing the plaintext CSVs into tables of the same types, then QUERY, as CSV with a header."""
    p = subprocess.run([SQLITE3, ":memory:",
                        "CREATE TABLE patients (id INTEGER, city TEXT, age INTEGER)",
                        "CREATE TABLE visits (id INTEGER, patient INTEGER, cost REAL)",
                        f".import --csv --skip 1 {j.patients_csv} patients",
                        f".import --csv --skip 1 {j.visits_csv} visits",
                        ".headers on", ".mode csv", query], capture_output=True, check=True)
    return p.stdout


def test_the_bundle_is_measured_and_self_contained():
    yaml = (BUNDLE / "enclave.yaml").read_text()
    assert 'command: ["/app/cloister-job"]' in yaml
    assert sorted(f.name for f in BUNDLE.iterdir()) == ["cloister-job", "enclave.yaml"]
    pcr0 = subprocess.run([str(CLOISTER), "enclave", "measure", str(BUNDLE)], capture_output=True, text=True,
                          check=True, env=sanitizer_env()).stdout.strip()
    assert len(pcr0) == 96 and int(pcr0, 16)
    # statically linked: the measurement covers every instruction it runs
    with open(BUNDLE / "cloister-job", "rb") as f:
        assert b".interp" not in f.read()


@pytest.mark.parametrize("executable", [ENGINE, BUNDLE / "cloister-job"], ids=["build", "bundle"])
def test_a_join_and_group_by_equals_sqlite3_and_decrypts_with_age(job, executable):
    status, out = engine(manifest(job, JOIN), executable=executable)
    assert status == 0 and out["ok"] is True, out
    data = job.output.read_bytes()
    assert out["resultSha256"] == hashlib.sha256(data).hexdigest()
    plain = subprocess.run([AGE, "-d", "-i", str(job.reader), str(job.output)], capture_output=True, check=True).stdout
    expected = sqlite3_reference(job, JOIN)
    assert plain == expected
    assert out["rows"] == 5  # the five cities
    # every recipient opens it; someone else cannot
    assert subprocess.run([AGE, "-d", "-i", str(job.owner), str(job.output)], capture_output=True).stdout == plain
    other = subprocess.run([AGE, "-d", "-i", str(job.stranger), str(job.output)], capture_output=True)
    assert other.returncode != 0 and other.stdout == b""
    # and nothing but the result was written
    assert sorted(f.name for f in job.dir.iterdir() if f.name.startswith("result")) == ["result.age"]


@pytest.mark.parametrize("query, why", [
    ("ATTACH DATABASE '/tmp/evil.db' AS evil", "ATTACH is not allowed"),
    ("SELECT readfile('/etc/passwd')", "no such function: readfile"),
    ("SELECT load_extension('/tmp/evil.so')", "the function load_extension is not allowed"),
    ("PRAGMA writable_schema = 1", "PRAGMA is not allowed"),
    ("INSERT INTO visits VALUES (0, 0, 0)", "INSERT is not allowed"),
    ("CREATE TABLE leak AS SELECT * FROM patients", "is not allowed"),
    ("SELECT 1; DROP TABLE visits", "the query must be one statement"),
])
def test_refused_queries_end_with_a_clear_error_and_no_output(job, query, why):
    status, out = engine(manifest(job, query))
    assert status == 1 and out["ok"] is False and why in out["error"], out
    assert not any(f.name.startswith("result") for f in job.dir.iterdir())


def test_an_endless_recursive_cte_ends_at_the_time_limit(job):
    q = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    status, out = engine(manifest(job, q, limits={"memoryMiB": 256, "seconds": 2, "rows": 10}), timeout=30)
    assert status == 1 and out == {"ok": False, "error": "time limit: the job ran longer than its 2 s (limits.seconds)"}
    assert not job.output.exists()


def test_the_memory_and_row_limits(job):
    q = "SELECT length(group_concat(a.city || b.cost)) FROM patients a, visits b"
    status, out = engine(manifest(job, q, limits={"memoryMiB": 8, "seconds": 60, "rows": 10}), timeout=90)
    assert status == 1 and out["error"] == "memory limit: the job needs more than its 8 MiB (limits.memoryMiB)", out
    status, out = engine(manifest(job, "SELECT id FROM visits", limits={"rows": 100}))
    assert status == 1 and out["error"] == "row limit: the result has more than 100 rows (limits.rows)"
    assert not job.output.exists()


def test_inputs_are_checked_before_anything_runs(job):
    m = json.loads(manifest(job, JOIN).read_text())
    m["inputs"][1]["sha256"] = m["inputs"][0]["sha256"]
    (job.dir / "m.json").write_text(json.dumps(m))
    status, out = engine(job.dir / "m.json")
    assert status == 1 and "input visits: the ciphertext's SHA-256 is " in out["error"]
    # a key of another file does not open it
    m = json.loads(manifest(job, JOIN).read_text())
    m["inputs"][1]["fileKey"] = m["inputs"][0]["fileKey"]
    (job.dir / "m.json").write_text(json.dumps(m))
    status, out = engine(job.dir / "m.json")
    assert status == 1 and out["error"] == \
        "input visits: the file key does not open the file (its header MAC does not verify)"
    # a value that is not of its column's type: row and column named, never the value
    m = json.loads(manifest(job, JOIN).read_text())
    m["inputs"][0]["schema"][1]["type"] = "integer"
    (job.dir / "m.json").write_text(json.dumps(m))
    status, out = engine(job.dir / "m.json")
    assert status == 1 and out["error"] == "input patients: row 1, column city: the value is not an integer"
    status, out = engine(job.dir / "missing.json")
    assert status == 1 and out["error"].startswith("cannot read the manifest ")
    assert not job.output.exists()
