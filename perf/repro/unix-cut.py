# What an AF_UNIX stream peer can learn when the other end is cut (issue 19, item 9):
# the kernel signals a close it can see, one experiment per line of output. Socket "A"
# plays ringsock's upstream socket, "B" the Unix-socket backend; no ringsock involved.
# Results and the kernel source behind them: perf/results/unix-cut-2026-12-08.md.
# Run: python3 perf/repro/unix-cut.py   (any Linux; MSG_OOB needs CONFIG_AF_UNIX_OOB)
import errno, os, select, signal, socket, struct, sys, time

UPLOAD = 200_000  # what A forwarded to B before the cut; B reads it all first


def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    b.settimeout(5)
    return a, b


def send_upload(a):
    a.setblocking(False)
    sent = 0
    while sent < UPLOAD:
        try:
            sent += a.send(b"u" * min(65536, UPLOAD - sent))
        except BlockingIOError:
            break
    a.setblocking(True)
    return sent


def read_all(b):
    """B reads to the end: (bytes, how it ended, events poll saw at the end)."""
    got = 0
    end = None
    while end is None:
        try:
            d = b.recv(65536)
            if d:
                got += len(d)
            else:
                end = "EOF"
        except OSError as e:
            end = errno.errorcode.get(e.errno, str(e.errno))
    return got, end


def poll_events(s):
    p = select.poll()
    p.register(s, select.POLLIN | select.POLLPRI | select.POLLOUT | getattr(select, "POLLRDHUP", 0x2000))
    names = []
    for fd, ev in p.poll(0):
        for bit, name in [(select.POLLIN, "IN"), (select.POLLPRI, "PRI"), (select.POLLOUT, "OUT"),
                          (select.POLLERR, "ERR"), (select.POLLHUP, "HUP"),
                          (getattr(select, "POLLRDHUP", 0x2000), "RDHUP")]:
            if ev & bit:
                names.append(name)
    return "|".join(names) or "-"


def b_write(b):
    try:
        b.send(b"x", socket.MSG_NOSIGNAL)
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def report(name, a_setup, close=lambda a: a.close()):
    a, b = pair()
    sent = send_upload(a)
    a_setup(a, b)
    close(a)
    ev = poll_events(b)
    w = b_write(b)
    got, end = read_all(b)
    # A second read after the error: is the report kept?
    try:
        again = "EOF" if b.recv(10) == b"" else "data"
    except OSError as e:
        again = errno.errorcode.get(e.errno, "?")
    print(f"{name:62} B read {got:>6}/{sent} then {end:10} next {again:4}  "
          f"B write: {w:6}  poll: {ev}")
    b.close()


def nothing(a, b):
    pass


def b_sent_unread(a, b):
    b.send(b"answer")  # B's bytes sit in A's receive queue, unread
    time.sleep(0.01)


def b_sent_read(a, b):
    b.send(b"answer")
    time.sleep(0.01)
    a.recv(100)  # A read (and dropped) them: its queue is empty again


def linger0(a, b):
    a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def oob(a, b):
    a.send(b"!", socket.MSG_OOB)


def oob_inline(a, b):
    b.setsockopt(socket.SOL_SOCKET, socket.SO_OOBINLINE, 1)
    a.send(b"!", socket.MSG_OOB)


def scm_rights(a, b):
    r, w = os.pipe()
    a.sendmsg([b"F"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", r))])
    os.close(r)
    os.close(w)


def shut(how):
    return lambda a: (a.shutdown(how), a.close())


print(f"kernel {os.uname().release}; A sends B {UPLOAD} bytes, then is cut as described")
report("0 clean end: shutdown(SHUT_WR), A stays open", nothing, lambda a: a.shutdown(socket.SHUT_WR))
report("1 close, A's receive queue empty", nothing)
report("2 close, B had sent 6 bytes A never read", b_sent_unread)
report("3 close, B had sent 6 bytes A read (linger's read-and-drop)", b_sent_read)
report("4 SO_LINGER {1,0} then close, A's queue empty", linger0)
report("5 SO_LINGER {1,0} then close, B's bytes unread", lambda a, b: (linger0(a, b), b_sent_unread(a, b)))
report("6 shutdown(SHUT_RDWR) then close", nothing, shut(socket.SHUT_RDWR))
report("7 shutdown(SHUT_RD) then close", nothing, shut(socket.SHUT_RD))
report("8 one MSG_OOB byte then close (B plain reader)", oob)
report("9 one MSG_OOB byte then close (B has SO_OOBINLINE)", oob_inline)
report("10 an fd passed with SCM_RIGHTS (1 byte) then close", scm_rights)

# 11: shutdown(SHUT_RD) alone, A kept open: does B's read see anything?
a, b = pair()
send_upload(a)
a.shutdown(socket.SHUT_RD)
b.settimeout(0.3)
got = 0
try:
    while True:
        d = b.recv(65536)
        if not d:
            print("11 shutdown(SHUT_RD), A still open: B reads EOF (unexpected)")
            break
        got += len(d)
except socket.timeout:
    print(f"{'11 shutdown(SHUT_RD), A still open':62} B read {got:>6} then waits (no EOF, "
          f"no error); B write: {b_write(b)}")
a.close()
b.close()

# 12: the process holding A dies (as at --shutdown-timeout's exit): same as a close.
for unread in (False, True):
    a, b = pair()
    if unread:
        b.send(b"answer")
    pid = os.fork()
    if pid == 0:
        b.close()
        send_upload(a)
        os._exit(0) if False else os.kill(os.getpid(), signal.SIGKILL)
    a.close()
    os.waitpid(pid, 0)
    got, end = read_all(b)
    label = "12 process holding A killed" + (", B's bytes unread" if unread else ", queue empty")
    print(f"{label:62} B read {got:>6} then {end}")
    b.close()

# 13: B's bytes unread by A, and a thread of B blocked in the kernel in send(2) when A
# closes (a truly blocking socket: Python's timeout mode would poll instead). Which call
# gets the one ECONNRESET report (sock_error() clears sk_err)?
import threading


def blocked_writer_at_close(partial):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    send_upload(a)
    b.setblocking(False)
    try:
        while True:
            b.send(b"w" * 65536)
    except BlockingIOError:
        pass
    b.setblocking(True)
    result = {}

    def writer():
        try:
            result["send"] = b.send(b"w" * (4 << 20))
        except OSError as e:
            result["send"] = errno.errorcode.get(e.errno, str(e.errno))

    t = threading.Thread(target=writer)
    t.start()
    time.sleep(0.2)  # let it block
    if partial:
        a.recv(300_000)  # room for part of it; it blocks again
        time.sleep(0.2)
    a.close()
    t.join()
    b.settimeout(5)
    got, end = read_all(b)
    label = "13 as 2, a thread of B blocked in send" + (" (part sent)" if partial else "")
    print(f"{label:62} B read {got:>6} then {end}; the blocked send returned {result['send']!r}")
    b.close()


blocked_writer_at_close(False)
blocked_writer_at_close(True)
