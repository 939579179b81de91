"""Idle keep-alive connections: what each one costs the process serving it.

usage: idle-conns.py HOST PORT COUNT PID PATH [HEADER...]

Reads VmRSS of PID, opens COUNT connections to HOST:PORT (at most 200
connecting at once), sends one complete keep-alive request for PATH with the
given headers ("Name: value") on each and reads its whole answer (so the
server is past any accept-only state and holds a real, idle keep-alive
connection), waits 2 s, checks how many the server still holds open, reads
VmRSS of PID again and prints one line of JSON:
{"requested", "opened", "failed", "open", "rss_before_kib", "rss_after_kib", "kib_per_conn"}
Connections are then reset (SO_LINGER 0) so that no TIME_WAIT is left behind.
Bounded: gives up on connections not done after 120 s.
"""
import json
import resource
import select
import selectors
import socket
import struct
import sys
import time


def vmrss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def answer_complete(buf):
    """None while incomplete; else the status code."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].decode("latin-1").split("\r\n")
    status = int(head[0].split(" ")[1])
    length = None
    chunked = False
    for h in head[1:]:
        name, _, value = h.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip())
        elif name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    body = buf[end + 4:]
    if chunked:
        return status if body.endswith(b"0\r\n\r\n") else None
    return status if len(body) >= (length or 0) else None


def main():
    host, port, count, pid, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    headers = "".join(h + "\r\n" for h in sys.argv[6:])
    if "host:" not in headers.lower():
        headers = f"Host: {host}\r\n" + headers
    request = f"GET {path} HTTP/1.1\r\n{headers}\r\n".encode()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < count + 64:
        sys.exit(f"idle-conns: the open-file limit ({hard}) is below {count} connections")

    before = vmrss_kib(pid)
    sel = selectors.DefaultSelector()
    idle, failed, started = [], 0, 0
    in_flight = {}  # socket -> [state, received bytes]
    deadline = time.monotonic() + 120
    while (started < count or in_flight) and time.monotonic() < deadline:
        while started < count and len(in_flight) < 200:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex((host, port))
            in_flight[s] = ["connecting", b""]
            sel.register(s, selectors.EVENT_WRITE)
            started += 1
        for key, _ in sel.select(timeout=1):
            s = key.fileobj
            st = in_flight[s]
            try:
                if st[0] == "connecting":
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, "connect")
                    s.send(request)  # small: fits the socket buffer at once
                    st[0] = "reading"
                    sel.modify(s, selectors.EVENT_READ)
                    continue
                data = s.recv(65536)
                if not data:
                    raise OSError("closed before the answer")
                st[1] += data
                status = answer_complete(st[1])
                if status is None:
                    continue
                sel.unregister(s)
                del in_flight[s]
                if status == 200:
                    idle.append(s)
                else:
                    failed += 1
                    s.close()
            except OSError:
                sel.unregister(s)
                del in_flight[s]
                failed += 1
                s.close()
    for s in in_flight:
        failed += 1
        s.close()

    time.sleep(2)
    # a connection the server closed (or wrote to) polls readable
    poller = select.poll()
    for s in idle:
        poller.register(s, select.POLLIN | select.POLLRDHUP)
    gone = {fd for fd, _ in poller.poll(0)}
    still = len(idle) - len(gone)
    after = vmrss_kib(pid)
    print(json.dumps({"requested": count, "opened": len(idle), "failed": failed, "open": still,
                      "rss_before_kib": before, "rss_after_kib": after,
                      "kib_per_conn": round((after - before) / still, 2) if still else None}))
    linger = struct.pack("ii", 1, 0)
    for s in idle:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        s.close()


if __name__ == "__main__":
    main()
