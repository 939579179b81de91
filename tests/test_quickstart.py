"""The README's run command: scripts/dev.sh builds, starts cloisterd --dev,
logs the CLI in, applies the quickstart and stays up until SIGTERM."""
import os
import select
import signal
import subprocess
import time

import requests

from conftest import ROOT, free_port


def test_dev_script_brings_up_a_healthy_server_with_the_quickstart(tmp_path):
    port = free_port()
    data = tmp_path / "data"
    env = dict(os.environ, CLOISTER_DATA_DIR=str(data), CLOISTER_API_LISTEN=f"127.0.0.1:{port}",
               CLOISTER_PROXY_LISTEN=f"127.0.0.1:{free_port()}",
               XDG_CONFIG_HOME=str(tmp_path / "config"))
    env.pop("CLOISTER_TOKEN", None)
    p = subprocess.Popen(["bash", str(ROOT / "scripts" / "dev.sh")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         env=env, cwd=ROOT, start_new_session=True)
    out = b""
    try:
        deadline = time.time() + 600  # includes the first release build
        while b"Press Ctrl-C to stop." not in out:
            assert time.time() < deadline and p.poll() is None, out.decode(errors="replace")[-3000:]
            if select.select([p.stdout], [], [], 1)[0]:
                out += os.read(p.stdout.fileno(), 65536)
        text = out.decode(errors="replace")
        assert "service/wiki created" in text and "policy/devs-read created" in text, text[-3000:]
        # alice reached the demo wiki through the proxy, and not its admin pages
        assert "as alice through the proxy: 200" in text, text[-3000:]
        assert "/admin/ as alice through the proxy: 403" in text, text[-3000:]
        ca = str(data / "ca.pem")
        assert requests.get(f"https://127.0.0.1:{port}/healthz", verify=ca).status_code == 200
        token = (data / "admin.token").read_text().strip()
        r = requests.get(f"https://127.0.0.1:{port}/v1/services/wiki", verify=ca,
                         headers={"Authorization": f"Bearer {token}"})
        assert r.json()["spec"]["upstream"]["url"] == "http://127.0.0.1:9000"
        # the CLI session it saved works
        cli = subprocess.run([str(ROOT / "build" / "src" / "cli" / "cloister"), "get", "users"], env=env,
                             capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0 and "alice" in cli.stdout, cli.stderr
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            raise
    assert p.returncode == 0
