# How much room a socket's send buffer has, asked three ways, against what a
# non-blocking splice(2) from a 1 MiB pipe then really takes (perf/results/
# pipes-under-stall-2026-12-08.md; sys::send_room). A peer that never reads; each pass
# splices "room" bytes from an always-full source into the pipe and from the pipe into
# the socket, and counts the passes that left bytes in the pipe. Loopback only.
#
#   python3 perf/repro/send-room.py            SIOCOUTQ vs SO_MEMINFO, TCP and Unix
#   python3 perf/repro/send-room.py lowat      the same with TCP_NOTSENT_LOWAT 128 KiB
import fcntl, os, socket, struct, sys, termios, threading

F_SETPIPE_SZ = 1031
SO_MEMINFO = 55
SIOCOUTQNSD = 0x894B
TCP_NOTSENT_LOWAT = 25
LOWAT = 128 * 1024 if sys.argv[1:] == ["lowat"] else None


def outq(s):
    return struct.unpack("i", fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]


def by_outq(s):
    return s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) - outq(s)


def by_meminfo(s):
    # RMEM_ALLOC, RCVBUF, WMEM_ALLOC, SNDBUF, FWD_ALLOC, WMEM_QUEUED, ...
    m = struct.unpack("9I", s.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36))
    room = m[3] - (m[2] if s.family == socket.AF_UNIX else m[5])
    if LOWAT and s.family != socket.AF_UNIX:
        unsent = struct.unpack("i", fcntl.ioctl(s.fileno(), SIOCOUTQNSD, b"\0" * 4))[0]
        room = min(room, LOWAT - unsent)
    return room


def connected(kind):
    if kind == "unix":
        return socket.socketpair()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    dst = socket.create_connection(listener.getsockname())
    if LOWAT:
        dst.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, LOWAT)
    return dst, listener.accept()[0]


def flood(feed):
    try:
        while True:
            feed.sendall(b"x" * (1 << 20))
    except OSError:
        pass  # the run is over and its sockets closed


def run(kind, room_of):
    feed, src = socket.socketpair()
    threading.Thread(target=flood, args=(feed,), daemon=True).start()
    dst, _peer = connected(kind)
    dst.setblocking(False)
    r, w = os.pipe()
    cap = fcntl.fcntl(w, F_SETPIPE_SZ, 1 << 20)
    moved = passes = left_over = 0
    while passes < 400:
        room = room_of(dst)
        if room <= 0:
            break
        passes += 1
        # Blocking on the source (the feeder may lag), never on the socket under test.
        n = os.splice(src.fileno(), w, min(room, cap))
        while n:
            try:
                m = os.splice(r, dst.fileno(), n, flags=os.SPLICE_F_NONBLOCK)
            except BlockingIOError:
                left_over += 1
                os.read(r, n)
                break
            n -= m
            moved += m
    print(f"{kind:4} {room_of.__name__:10}: {moved >> 10} KiB in {passes} passes, "
          f"{left_over} of them left bytes in the pipe; room now {room_of(dst)}")


for kind in ("tcp", "unix"):
    for room_of in (by_outq, by_meminfo):
        run(kind, room_of)
