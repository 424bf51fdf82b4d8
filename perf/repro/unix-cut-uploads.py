# Issue 19 item 9: uploads through `ringsock proxy` to a Unix-socket backend, each cut
# by the client's reset at 8 of 10 MiB, and how the backend saw each end: what its read
# ended with, whether poll(2) showed POLLHUP (socket closed completely) at that moment,
# and whether a send failed. Backends: "reads" only reads the upload (the case:
# it has sent nothing); "answers" is an event loop that also sends a 4 MiB answer the
# client never reads. The "clean" control sends all 10 MiB and half-closes.
# Results: perf/results/unix-cut-2026-12-08.md.
# Run from the project root: python3 perf/repro/unix-cut-uploads.py [BINARY] [epoll]
# (BINARY defaults to target/release/ringsock). Loopback only, about 20 s.
import errno, os, select, selectors, socket, struct, subprocess, sys, tempfile, threading, time

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/release/ringsock"
EPOLL = "epoll" in sys.argv[2:]
UPLOADS, SIZE, CUT_AT, ANSWER = 50, 10 << 20, 8 << 20, 4 << 20


def hup(conn):
    p = select.poll()
    p.register(conn, select.POLLIN)
    return any(ev & select.POLLHUP for _, ev in p.poll(0))


def serve(conn, answers, results):
    """One backend connection: read to the end in an event loop that also sends the
    answer when asked to; after a clean EOF, say "ok" and close."""
    conn.setblocking(False)
    sel = selectors.DefaultSelector()
    left = ANSWER if answers else 0
    sel.register(conn, selectors.EVENT_READ | (selectors.EVENT_WRITE if left else 0))
    got, end, send_err = 0, None, None
    while end is None:
        for key, ev in sel.select(timeout=30) or [(None, 0)]:
            if key is None:
                end = "timeout"
                break
            if ev & selectors.EVENT_READ:
                try:
                    d = conn.recv(1 << 16)
                    if d:
                        got += len(d)
                    else:
                        end = "EOF"
                except BlockingIOError:
                    pass
                except OSError as e:
                    end = errno.errorcode.get(e.errno, str(e.errno))
            if end is None and ev & selectors.EVENT_WRITE:
                try:
                    left -= conn.send(b"a" * min(left, 1 << 16))
                except BlockingIOError:
                    pass
                except OSError as e:
                    send_err, left = errno.errorcode.get(e.errno, str(e.errno)), 0
                if left <= 0:
                    sel.modify(conn, selectors.EVENT_READ)
    closed = hup(conn)
    if end == "EOF" and not closed and not answers:
        conn.setblocking(True)
        conn.sendall(b"ok")
    results.append((got, end, closed, send_err))
    conn.close()


def run(answers, clean):
    d = tempfile.mkdtemp()
    path = os.path.join(d, "backend.sock")
    ls = socket.socket(socket.AF_UNIX)
    ls.bind(path)
    ls.listen(64)
    results, threads = [], []

    def accept_all():
        for _ in range(UPLOADS):
            c, _ = ls.accept()
            t = threading.Thread(target=serve, args=(c, answers, results))
            t.start()
            threads.append(t)

    acceptor = threading.Thread(target=accept_all)
    acceptor.start()
    port_sock = socket.socket()
    port_sock.bind(("127.0.0.1", 0))
    port = port_sock.getsockname()[1]
    port_sock.close()
    env = dict(os.environ, RINGSOCK_LOG_LEVEL="error")
    if EPOLL:
        env["MONOIO_FORCE_LEGACY_DRIVER"] = "1"
    proc = subprocess.Popen([BINARY, "proxy", "--listen", f"127.0.0.1:{port}", path], env=env)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            break
        except OSError:
            time.sleep(0.05)
    # That probe was forwarded too: the backend counts it, with 0 bytes.
    block = b"u" * (1 << 16)
    replies = 0
    for _ in range(UPLOADS - 1):
        c = socket.create_connection(("127.0.0.1", port))
        sent = 0
        while sent < (SIZE if clean else CUT_AT):
            sent += c.send(block)
        if clean:
            c.shutdown(socket.SHUT_WR)
            c.settimeout(30)
            replies += c.recv(10) == b"ok"
        else:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
    acceptor.join()
    for t in threads:
        t.join()
    proc.terminate()
    proc.wait()
    cut = [r for r in results if r[0] > 0]
    ends = {}
    for _, end, closed, send_err in cut:
        key = end + (" + POLLHUP" if closed else " (socket open)")
        if send_err:
            key += f", a send failed with {send_err}"
        ends[key] = ends.get(key, 0) + 1
    lo = min(r[0] for r in cut) / (1 << 20)
    hi = max(r[0] for r in cut) / (1 << 20)
    label = ("clean half-close, " if clean else "reset at 8 MiB, ") + (
        "backend answers" if answers else "backend reads")
    extra = f", {replies} clients got the backend's ok" if clean else ""
    print(f"  {label}: {len(cut)} uploads, {lo:.1f}-{hi:.1f} MiB read{extra}")
    for key, n in sorted(ends.items(), key=lambda kv: -kv[1]):
        print(f"    {n:3} {key}")


print(f"{BINARY} ({'epoll' if EPOLL else 'io_uring'}), {UPLOADS - 1} uploads of "
      f"{SIZE >> 20} MiB to a Unix-socket backend")
run(answers=False, clean=True)
run(answers=False, clean=False)
run(answers=True, clean=False)
