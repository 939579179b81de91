"""cloister enclave measure: the bundle measurement (PCR0) equals the one the
docs tell users to recompute with find, stat and sha384sum."""
import os
import re
import subprocess

from conftest import CLOISTER, ROOT, sanitizer_env

DOC = (ROOT / "docs" / "enclaves.md").read_text()
RECIPE = re.search(r"## Recompute it with standard tools\n\n```sh\ncd [^\n]+\n(.*?)```", DOC, re.S).group(1)


def measure(path, *extra):
    return subprocess.run([str(CLOISTER), "enclave", "measure", str(path), *extra], capture_output=True, text=True,
                          env=sanitizer_env(), timeout=60)


def make_bundle(root):
    (root / "lib" / "deep").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "enclave.yaml").write_text('command: ["/usr/bin/python3", "app.py"]\nport: 8080\n')
    (root / "app.py").write_text("print('hello')\n")
    (root / "lib" / "deep" / "data.bin").write_bytes(bytes(range(256)) * 300)
    (root / "lib" / "a-b").write_text("dash sorts before slash\n")
    (root / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o750)
    os.chmod(root / "empty", 0o700)


def test_measurement_matches_the_documented_recipe(tmp_path):
    b = tmp_path / "bundle"
    make_bundle(b)
    r = measure(b)
    assert r.returncode == 0, r.stderr
    ours = r.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{96}", ours)
    theirs = subprocess.run(["bash", "-c", RECIPE], cwd=b, capture_output=True, text=True, check=True).stdout.strip()
    assert ours == theirs
    assert measure(b, "-o", "json").stdout.strip() == '{"pcr0":"%s"}' % ours


def test_any_change_changes_the_measurement(tmp_path):
    b = tmp_path / "bundle"
    make_bundle(b)
    base = measure(b).stdout
    (b / "app.py").write_text("print('hellO')\n")
    changed_content = measure(b).stdout
    os.chmod(b / "app.py", 0o755)
    changed_mode = measure(b).stdout
    (b / "new").mkdir()
    added_dir = measure(b).stdout
    assert len({base, changed_content, changed_mode, added_dir}) == 4


def test_links_and_special_files_are_refused(tmp_path):
    b = tmp_path / "bundle"
    make_bundle(b)
    os.symlink("/etc/passwd", b / "lib" / "passwd")
    r = measure(b)
    assert r.returncode == 1 and "lib/passwd" in r.stderr and "symbolic links" in r.stderr
    os.unlink(b / "lib" / "passwd")
    os.mkfifo(b / "pipe")
    r = measure(b)
    assert r.returncode == 1 and "pipe" in r.stderr


def test_usage_and_missing_directory(tmp_path):
    assert measure(tmp_path / "nope").returncode == 1
    r = subprocess.run([str(CLOISTER), "enclave", "measure"], capture_output=True, text=True, env=sanitizer_env())
    assert r.returncode == 2
