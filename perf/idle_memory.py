#!/usr/bin/env python3
"""Idle memory per connection, and whether it comes back: RSS of a running ringsock
(or any server) idle, with N idle keep-alive connections, and for 15 s after they close.

  perf/idle_memory.py serve ADDR PID N      # each connection: one GET /api/version, kept open
  perf/idle_memory.py proxy ADDR PID N      # each connection: one 8-byte echo round trip

Prints one line per phase; the per-connection figure is (RSS with N - RSS idle) / N, 1 s
after the connections opened and again 4 s after (when ringsock has moved their waiting
receives off their buffers).
Loopback only; every loop is bounded.
"""
import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def connect(addr):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


def serve_round_trip(s):
    s.sendall(b"GET /api/version HTTP/1.1\r\nHost: t\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"}"):
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("closed")
        data += chunk


def proxy_round_trip(s):
    s.sendall(b"12345678")
    got = b""
    while len(got) < 8:
        chunk = s.recv(8 - len(got))
        if not chunk:
            raise RuntimeError("closed")
        got += chunk


def main():
    kind, addr, pid, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    round_trip = serve_round_trip if kind == "serve" else proxy_round_trip
    time.sleep(0.5)
    idle = rss_kib(pid)
    conns = []
    for _ in range(n):
        s = connect(addr)
        round_trip(s)
        conns.append(s)
    time.sleep(1)
    held = rss_kib(pid)
    print(f"idle_kib={idle} with_{n}_kib={held} per_conn_kib={(held - idle) / n:.2f} (1 s after)")
    # ringsock moves a receive that waited 1-2 s off its buffer, then gives the memory back.
    time.sleep(3)
    quiet = rss_kib(pid)
    print(f"with_{n}_quiet_kib={quiet} per_conn_kib={(quiet - idle) / n:.2f} (4 s after)")
    for s in conns:
        s.close()
    start = time.time()
    for _ in range(16):
        time.sleep(1)
        print(f"after_close_s={time.time() - start:.0f} rss_kib={rss_kib(pid)}")
    print(f"bound_kib={2 * idle + 8192} (2x idle + 8 MiB)")


if __name__ == "__main__":
    main()
