#!/usr/bin/env python3
# Fault soak for `ringsock proxy`; perf/soak.sh runs it once per driver.
#
# Checksummed transfers go client -> ringsock proxy -> backend and back, through one proxy
# with a TCP backend and one with a Unix-socket backend at the same time, while faults
# are injected. Every direction that carries data is checked byte for byte against a
# deterministic pattern (so a report can say at which offset a stream went wrong) and its
# end is classified:
#   ok             every byte, right content, clean EOF
#   reset          ended by ECONNRESET: what a cut stream must look like over TCP
#   eof-after-cut  clean EOF, short, after an injected cut on a path with a Unix-socket
#                  leg: AF_UNIX has no RST, so a Unix backend sees a cut client as EOF and
#                  the proxy sees a killed Unix backend as EOF (expected, not a failure)
#   truncated      clean EOF, short, where no cut can excuse it: the receiver took a cut
#                  stream for a complete one. Must be 0.
#   corrupt        a byte differs from what was sent. Must be 0.
#   other          hangs (no progress for IDLE_LIMIT), refused connects, missing records
#   n/a            the transfer's only checkable direction was cut by its own receiver
# A transfer counts as its worst direction. The proxies' RSS, threads, fds and pipes are
# sampled before (idle), during (peak) and after each scenario; fds, threads and pipes
# must come back to the idle level within SETTLE_LIMIT.
#
#   soak.py run --ringsock BIN --driver uring|epoll --work DIR --json OUT [--only NAME...]
#   soak.py backend --listen tcp:HOST:PORT|unix:PATH --log FILE [--backlog N] [--accept-every S]
#   soak.py report OUT.json...        (markdown tables on stdout)
#
# Stdlib only; Linux only (/proc, epoll); `run` needs root for the pipe sysctl and to run
# each proxy as its own unprivileged user.

import argparse
import collections
import errno
import fcntl
import json
import os
import random
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field

KIB, MIB = 1024, 1024 * 1024
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE

# A direction with no byte moving for this long is a hang: the longest injected pause is
# 3 s, the proxy's linger before a cut 5 s, its --connect-timeout at most 10 s.
IDLE_LIMIT = 45.0
# Pipe pools are trimmed after 5 s unused (checked every 5 s), io_uring workers leave
# after 5 s idle, and a cut connection may linger 5 s: 20 s covers all three.
SETTLE_LIMIT = 20.0
SAMPLE_EVERY = 0.25

# --- the pattern ---------------------------------------------------------------------

# Prime: a stream that skipped or repeated a chunk never lines up with itself again.
PERIOD = 1_048_573
CHUNK = 256 * KIB
_BASE = random.Random(20261202).randbytes(PERIOD)
# Doubled tail, so every slice of up to CHUNK bytes is contiguous.
PATTERN = _BASE + _BASE[:CHUNK]
PATTERN_VIEW = memoryview(PATTERN)
UP, DOWN = 0, 1


def pattern_offset(tid, direction, pos):
    """Where byte `pos` of transfer `tid`'s stream in `direction` sits in PATTERN."""
    return ((tid * 2 + direction) * 104_729 + pos) % PERIOD


# What the client tells the backend before its upload: who it is, how much each side
# sends, and the faults the backend is to inject.
HEADER = struct.Struct("!4sIQQIQI")
MAGIC = b"SOAK"
REPLY_AFTER_EOF, STALL_READ, ABORT = 1, 2, 4

LINGER_RST = struct.pack("ii", 1, 0)
LINGER_OFF = struct.pack("ii", 0, 0)


@dataclass
class Plan:
    """Faults one end applies to its own socket."""

    abort_after_sent: int | None = None  # RST once this many pattern bytes went out
    abort_after_received: int | None = None
    vanish: bool = False  # close right after its FIN, reading nothing more...
    vanish_after: int = 0  # ...once this much of the answer was read
    stall_at: int | None = None  # stop reading at this offset...
    stall_secs: float = 0.0  # ...for this long
    slow_secs: float = 0.0  # read one byte a second for this long, then go on
    reply_after_eof: bool = False  # send only once the other side's stream ended
    hold_at: int | None = None  # stop sending at this offset, FIN not sent...
    hold_secs: float = 0.0  # ...for this long, then send the rest


def errname(e):
    return "error:" + errno.errorcode.get(e.errno or 0, str(e))


# --- one end of a transfer -----------------------------------------------------------


class Peer:
    """One end of a transfer on a non-blocking socket: sends its stream then FIN, checks
    what arrives, applies its Plan. Client and backend run this same code; the backend
    learns its part from the header.

    A reset is reported once, to whichever call comes first: when a send takes it, the
    receive that follows reads a plain EOF. `reset_seen` keeps that EOF from counting as
    a clean end; all calls on a socket happen in this one thread, so the order is known.
    """

    def __init__(self, sock, loop, on_done):
        self.sock, self.loop, self.on_done = sock, loop, on_done
        self.tcp = sock.family != socket.AF_UNIX
        self.tid = None
        self.send_dir = self.recv_dir = None
        self.send_len = self.recv_len = 0
        self.plan = Plan()
        self.out = b""  # sent before the pattern: the client's header
        self.header = None  # backend: the header read so far; None once it is not awaited
        self.sent = self.received = 0
        self.corrupt_at = None
        self.send_end = self.recv_end = None
        self.reset_seen = False
        self.connecting = False
        self.closed = False
        self.started = self.progress_at = time.monotonic()
        self.ended = None
        self.stall_until = None
        self.hold_until = None
        self.slow_until = None
        self.slow_next = 0.0

    @classmethod
    def client(cls, spec, addr, loop, on_done):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        peer = cls(sock, loop, on_done)
        peer.configure(spec.tid, UP, spec.up, DOWN, spec.down, spec.client)
        peer.out = HEADER.pack(MAGIC, spec.tid, spec.up, spec.down, spec.mode, spec.fault_at, spec.fault_ms)
        err = sock.connect_ex(addr)
        if err == errno.EINPROGRESS:
            peer.connecting = True
        elif err:
            peer.send_end = peer.recv_end = "error:" + errno.errorcode.get(err, str(err))
        return peer

    @classmethod
    def backend(cls, sock, loop, on_done):
        peer = cls(sock, loop, on_done)
        peer.header = bytearray()
        return peer

    def configure(self, tid, send_dir, send_len, recv_dir, recv_len, plan):
        self.tid, self.plan = tid, plan
        self.send_dir, self.send_len = send_dir, send_len
        self.recv_dir, self.recv_len = recv_dir, recv_len
        if plan.slow_secs:
            self.slow_until = time.monotonic() + plan.slow_secs

    def _configure_from_header(self):
        magic, tid, up, down, mode, fault_at, fault_ms = HEADER.unpack(bytes(self.header))
        if magic != MAGIC:
            self.corrupt_at = 0
            self._end_recv("bad-header")
            self.send_end = "none"
            return
        plan = Plan(reply_after_eof=bool(mode & REPLY_AFTER_EOF))
        if mode & STALL_READ:
            plan.stall_at, plan.stall_secs = fault_at, fault_ms / 1000
        if mode & ABORT:
            plan.abort_after_sent = fault_at
        self.configure(tid, DOWN, down, UP, up, plan)
        self.header = None

    # -- what the loop asks --

    def wants(self, now):
        if self.closed:
            return 0
        if self.connecting:
            return WRITE
        mask = 0
        if self.recv_end is None and not self._read_paused(now):
            mask |= READ
        if self.send_end is None and self.header is None and self._may_send(now):
            mask |= WRITE
        return mask

    def _read_paused(self, now):
        if self.stall_until is not None and now < self.stall_until:
            return True
        return self.slow_until is not None and now < self.slow_until and now < self.slow_next

    def _may_send(self, now):
        if self.hold_until is not None and now < self.hold_until:
            return False
        return not (self.plan.reply_after_eof and self.recv_end is None)

    def on_event(self, mask, now):
        if self.connecting:
            self._connected(now)
        else:
            if mask & READ and self.recv_end is None:
                self._read(now)
            if mask & WRITE and not self.closed and self.send_end is None:
                self._write(now)
        self._maybe_done()

    def tick(self, now):
        if not self.closed and now - self.progress_at > IDLE_LIMIT:
            self.send_end = self.send_end or "timeout"
            self.recv_end = self.recv_end or "timeout"
            self._close(LINGER_RST if self.tcp else None)
        self._maybe_done()

    # -- I/O --

    def _connected(self, now):
        self.connecting = False
        self.progress_at = now
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == errno.ECONNRESET:
            self.reset_seen = True
            self.send_end = self.recv_end = "reset"
        elif err:
            self.send_end = self.recv_end = "error:" + errno.errorcode.get(err, str(err))

    def _read(self, now):
        if self.header is not None:
            return self._read_header(now)
        want = CHUNK
        if self.slow_until is not None and now < self.slow_until:
            want, self.slow_next = 1, now + 1.0
        plan = self.plan
        if plan.stall_at is not None and self.stall_until is None:
            want = min(want, plan.stall_at - self.received)
            if want <= 0:
                self.stall_until = now + plan.stall_secs
                return
        if plan.abort_after_received is not None:
            want = min(want, plan.abort_after_received - self.received)
        if plan.vanish and self.received < plan.vanish_after:
            want = min(want, plan.vanish_after - self.received)
        try:
            data = self.sock.recv(want)
        except BlockingIOError:
            return
        except ConnectionResetError:
            self.reset_seen = True
            return self._end_recv("reset")
        except OSError as e:
            return self._end_recv(errname(e))
        if not data:
            return self._end_recv("reset" if self.reset_seen else "eof")
        self._check(data)
        self.received += len(data)
        self.progress_at = now
        if plan.abort_after_received is not None and self.received >= plan.abort_after_received:
            self._abort()
        self._maybe_vanish()

    def _read_header(self, now):
        try:
            data = self.sock.recv(HEADER.size - len(self.header))
        except BlockingIOError:
            return
        except ConnectionResetError:
            data, self.reset_seen = None, True
        except OSError as e:
            self.send_end = "none"
            return self._end_recv(errname(e))
        if not data:
            # Cut before the header was through: nothing to send, nobody to match.
            self.send_end = "none"
            return self._end_recv("reset" if self.reset_seen else "eof")
        self.header += data
        self.progress_at = now
        if len(self.header) == HEADER.size:
            self._configure_from_header()

    def _check(self, data):
        """Compares with the pattern; records the first offset that differs."""
        if self.corrupt_at is not None:
            return
        start, n = self.received, len(data)
        good = min(n, max(0, self.recv_len - start))
        off = pattern_offset(self.tid, self.recv_dir, start)
        if data[:good] != PATTERN[off : off + good]:
            expected = PATTERN[off : off + good]
            self.corrupt_at = start + next(i for i in range(good) if data[i] != expected[i])
        elif good < n:
            self.corrupt_at = start + good  # more bytes than were sent

    def _write(self, now):
        if self.out:
            try:
                n = self.sock.send(self.out)
            except OSError as e:
                return self._send_failed(e)
            self.out = self.out[n:]
            self.progress_at = now
            return
        want = min(CHUNK, self.send_len - self.sent)
        if self.plan.hold_at is not None and self.hold_until is None:
            want = min(want, self.plan.hold_at - self.sent)
            if want <= 0:
                self.hold_until = now + self.plan.hold_secs
                return
        if self.plan.abort_after_sent is not None:
            want = min(want, self.plan.abort_after_sent - self.sent)
            if want <= 0:
                return self._abort()
        if want > 0:
            off = pattern_offset(self.tid, self.send_dir, self.sent)
            try:
                self.sent += self.sock.send(PATTERN_VIEW[off : off + want])
            except OSError as e:
                return self._send_failed(e)
            self.progress_at = now
        if self.sent == self.send_len and self.plan.abort_after_sent is None:
            self._fin()

    def _send_failed(self, e):
        if isinstance(e, BlockingIOError):
            return
        if isinstance(e, ConnectionResetError):
            self.reset_seen = True
            self.send_end = "reset"
        elif isinstance(e, BrokenPipeError):
            self.send_end = "epipe"
        else:
            self.send_end = errname(e)

    def _fin(self):
        try:
            self.sock.shutdown(socket.SHUT_WR)
            self.send_end = "fin"
        except OSError as e:
            self.send_end = errname(e)
            return
        self._maybe_vanish()

    def _maybe_vanish(self):
        """A plain close with the answer unread: the kernel turns it into a RST."""
        plan = self.plan
        if plan.vanish and self.send_end == "fin" and self.received >= plan.vanish_after:
            self.recv_end = self.recv_end or "vanished"
            self._close(None)

    def _end_recv(self, how):
        self.recv_end = how

    def _abort(self):
        self.send_end = self.send_end or "aborted"
        self.recv_end = self.recv_end or "aborted"
        # A Unix socket has no RST: its close is all the cut there is.
        self._close(LINGER_RST if self.tcp else None)

    def _maybe_done(self):
        if not self.closed and self.send_end and self.recv_end:
            # The backend armed SO_LINGER 0 so that kill -9 resets; a normal end is a FIN.
            self._close(LINGER_OFF if self.tcp else None)
        if self.closed and self.ended is None:
            self.ended = time.monotonic()
            self.on_done(self)

    def _close(self, linger):
        if self.closed:
            return
        self.loop.forget(self)
        if linger is not None:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            except OSError:
                pass
        self.sock.close()
        self.closed = True

    def record(self):
        return {
            "tid": self.tid,
            "sent": self.sent,
            "send_end": self.send_end,
            "received": self.received,
            "recv_len": self.recv_len,
            "recv_end": self.recv_end,
            "corrupt_at": self.corrupt_at,
            "started": self.started,
            "ended": self.ended,
        }


class Loop:
    """A selectors loop over Peers and Listeners; each says what it waits for via
    `wants(now)`, so pauses and timers need no callbacks."""

    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.members = {}  # member -> mask it is registered with

    def add(self, member):
        self.members[member] = 0

    def forget(self, member):
        if self.members.pop(member, 0):
            self.sel.unregister(member.sock)

    def step(self, timeout):
        now = time.monotonic()
        for member, have in list(self.members.items()):
            want = member.wants(now)
            if want == have:
                continue
            if not have:
                self.sel.register(member.sock, want, member)
            elif not want:
                self.sel.unregister(member.sock)
            else:
                self.sel.modify(member.sock, want, member)
            self.members[member] = want
        for key, mask in self.sel.select(timeout):
            if key.data in self.members:
                key.data.on_event(mask, time.monotonic())
        now = time.monotonic()
        for member in list(self.members):
            member.tick(now)


# --- the backend process -------------------------------------------------------------


class Listener:
    """Accepts backend connections, at most one per `every` seconds (a slow service)."""

    def __init__(self, sock, loop, every, log):
        self.sock, self.loop, self.every, self.log = sock, loop, every, log
        self.next_accept = 0.0

    def wants(self, now):
        return READ if now >= self.next_accept else 0

    def on_event(self, mask, now):
        while now >= self.next_accept:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return
            if self.every:
                self.next_accept = now + self.every
            conn.setblocking(False)
            if conn.family != socket.AF_UNIX:
                # kill -9 must reset, as a crash with bytes unread would: a killed backend
                # that sent FIN would be a clean end nobody could blame the proxy for.
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            self.loop.add(Peer.backend(conn, self.loop, self.record))

    def tick(self, now):
        pass

    def record(self, peer):
        self.log.write(json.dumps(peer.record()) + "\n")


def backend_main(args):
    kind, _, where = args.listen.partition(":")
    if kind == "tcp":
        host, port = where.rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
    else:
        if os.path.exists(where):
            os.unlink(where)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(where)
        os.chmod(where, 0o777)  # the proxy runs as an unprivileged user
    sock.listen(args.backlog)
    sock.setblocking(False)
    log = open(args.log, "a", buffering=1)
    loop = Loop()
    loop.add(Listener(sock, loop, args.accept_every, log))
    print("ready", flush=True)
    while True:
        loop.step(0.05)


# --- processes under test ------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backend:
    """A backend process that can be killed and started again on the same address."""

    def __init__(self, target, work, backlog, accept_every):
        self.target = target
        if target == "tcp":
            self.port = free_port()
            self.listen, self.address = f"tcp:127.0.0.1:{self.port}", f"127.0.0.1:{self.port}"
        else:
            path = os.path.join(work, "backend.sock")
            self.listen, self.address = f"unix:{path}", path
        self.log = os.path.join(work, f"backend-{target}.jsonl")
        self.args = ["--backlog", str(backlog), "--accept-every", str(accept_every)]
        self.proc = None
        self.start()

    def start(self):
        cmd = [sys.executable, __file__, "backend", "--listen", self.listen, "--log", self.log]
        self.proc = subprocess.Popen(cmd + self.args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        if self.proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"backend {self.listen} did not start")

    def kill(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdout.close()
            self.proc = None

    def idle(self):
        """Whether the backend holds no connection: its listener is its only socket."""
        if self.proc is None:
            return True
        fd_dir = f"/proc/{self.proc.pid}/fd"
        try:
            links = [os.readlink(f"{fd_dir}/{fd}") for fd in os.listdir(fd_dir)]
        except FileNotFoundError:
            return True
        return sum(link.startswith("socket:") for link in links) <= 1

    def records(self):
        """Backend records by tid, and those that never got a whole header."""
        by_tid, headerless = {}, []
        if os.path.exists(self.log):
            with open(self.log) as f:
                for line in f:
                    rec = json.loads(line)
                    if rec["tid"] is None:
                        headerless.append(rec)
                    else:
                        by_tid[rec["tid"]] = rec
        return by_tid, headerless


# Each proxy runs as its own unprivileged user, as under systemd: the kernel's per-user
# pipe limit then applies to it, and the two proxies of a scenario do not share it.
PROXY_UIDS = {"tcp": 61001, "unix": 61002}


class Proxy:
    def __init__(self, ringsock, driver, target, backend, work, args, nofile):
        self.port = free_port()
        self.log = os.path.join(work, f"ringsock-{target}.log")
        uid = str(PROXY_UIDS[target])
        cmd = ["setpriv", "--reuid", uid, "--regid", uid, "--clear-groups"]
        if nofile:
            cmd = ["prlimit", f"--nofile={nofile}:{nofile}", "--"] + cmd
        cmd += [ringsock, "proxy", "--listen", f"127.0.0.1:{self.port}", "--shutdown-timeout", "1s"]
        cmd += args + [backend.address]
        env = dict(os.environ)
        env.pop("MONOIO_FORCE_LEGACY_DRIVER", None)
        if driver == "epoll":
            env["MONOIO_FORCE_LEGACY_DRIVER"] = "1"
        self.cmd = cmd
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.pid = self.proc.pid
        self._wait_listening()

    def _wait_listening(self):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ringsock exited at start: {self.log_text()}")
            if "listening on" in self.log_text():
                return
            time.sleep(0.05)
        raise RuntimeError(f"ringsock did not start listening: {self.log_text()}")

    def log_text(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def stop(self):
        """SIGTERM; how long it took to exit, or None when it had to be killed."""
        if self.proc.poll() is not None:
            return 0.0
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
            return time.monotonic() - start
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


def sample(pid):
    """The process's RSS, threads (and io_uring workers among them), fds, pipe fds and the
    capacity of its distinct pipes. Pipe capacity is read by opening each pipe through
    /proc/PID/fd (root may) and asking F_GETPIPE_SZ; both ends count once."""
    s = {"rss_kib": 0, "threads": 0, "iou_wrk": 0, "fds": 0, "pipe_fds": 0, "pipe_kib": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    s["rss_kib"] = int(line.split()[1])
        tasks = os.listdir(f"/proc/{pid}/task")
        fds = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, ProcessLookupError):
        return None
    s["threads"] = len(tasks)
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as f:
                s["iou_wrk"] += f.read().startswith("iou-")
        except FileNotFoundError:
            pass
    s["fds"] = len(fds)
    pipes = {}
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if link.startswith("pipe:"):
            s["pipe_fds"] += 1
            pipes.setdefault(link, fd)
    for fd in pipes.values():
        try:
            handle = os.open(f"/proc/{pid}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            s["pipe_kib"] += fcntl.fcntl(handle, fcntl.F_GETPIPE_SZ) // KIB
        finally:
            os.close(handle)
    return s


def is_idle(now, before):
    """Back at the idle level: no more fds and non-io_uring threads, and no pipes.
    io_uring workers are the kernel's and are reported, not judged: it keeps one per
    ring alive after use."""
    return (
        now is not None
        and now["fds"] <= before["fds"]
        and now["threads"] - now["iou_wrk"] <= before["threads"] - before["iou_wrk"]
        and now["pipe_fds"] == 0
    )


# --- scenarios -----------------------------------------------------------------------

CLASSES = ["ok", "reset", "eof-after-cut", "truncated", "corrupt", "other", "n/a"]
# Worst first: a transfer counts as its worst direction.
SEVERITY = ["corrupt", "truncated", "other", "reset", "eof-after-cut", "ok"]
CUT = ("ok", "reset", "eof-after-cut", "n/a")


@dataclass
class Spec:
    tid: int
    target: str
    kind: str
    up: int = 0
    down: int = 0
    client: Plan = field(default_factory=Plan)
    mode: int = 0  # backend faults, carried by the header
    fault_at: int = 0
    fault_ms: int = 0
    expect: tuple = ("ok",)


def size(rng, lo, hi):
    """Log-uniform, so small and large transfers are equally represented."""
    return int(lo * (hi / lo) ** rng.random())


def plain(rng, s, lo=64 * KIB, hi=8 * MIB):
    s.up, s.down = size(rng, lo, hi), size(rng, lo, hi)


def make_killed(rng, s):
    plain(rng, s, 1 * MIB, 8 * MIB)
    s.expect = ("ok", "reset", "eof-after-cut")


def make_stall(rng, s):
    # Early in an upload larger than the socket buffers and a pipe can hold, so the stall
    # pushes back through the proxy to the client.
    s.up, s.down = size(rng, 8 * MIB, 16 * MIB), size(rng, 64 * KIB, 4 * MIB)
    s.kind, s.mode = "backend-stall", STALL_READ
    s.fault_at, s.fault_ms = rng.randrange(64 * KIB, 1 * MIB), rng.choice([1000, 2000, 3000])


def make_backend_reset(rng, s):
    plain(rng, s)
    if s.tid % 2:
        s.kind, s.mode, s.fault_at = "backend-reset", ABORT, rng.randrange(s.down // 2)
        s.expect = ("reset", "eof-after-cut")


def make_backlog(rng, s):
    plain(rng, s, 64 * KIB, 256 * KIB)
    s.expect = ("ok", "reset")


def make_client_fault(rng, s):
    kind = ["client-reset-up", "client-reset-down", "half-close", "vanish", "slow-read"][s.tid % 5]
    s.kind = kind
    if kind == "client-reset-up":
        plain(rng, s)
        s.client.abort_after_sent, s.expect = rng.randrange(1, s.up), CUT
    elif kind == "client-reset-down":
        plain(rng, s)
        s.client.abort_after_received, s.expect = rng.randrange(1, s.down), CUT
    elif kind == "half-close":
        # A request, its end, then the answer: the backend writes only after the EOF.
        s.up, s.down = size(rng, 64 * KIB, 1 * MIB), size(rng, 1 * MIB, 8 * MIB)
        s.mode = REPLY_AFTER_EOF
    elif kind == "vanish":
        s.up, s.down = size(rng, 64 * KIB, 512 * KIB), size(rng, 1 * MIB, 8 * MIB)
        s.client.vanish, s.expect = True, CUT
    else:
        plain(rng, s, 256 * KIB, 4 * MIB)
        s.client.slow_secs = 3.0


def make_after(rng, s):
    plain(rng, s)
    s.kind = "after-load"


def make_vanish(rng, s):
    # Uploads a few windows long, so part is still in the client's send queue when its
    # close (with the answer unread) turns into a RST that discards it.
    s.kind, s.up, s.down = "vanish", size(rng, 128 * KIB, 512 * KIB), 1 * MIB
    s.client.vanish, s.client.vanish_after, s.expect = True, rng.randrange(1, 128 * KIB), CUT


def make_fds(rng, s):
    plain(rng, s, 64 * KIB, 2 * MIB)
    # The design says clients wait in the backlog; a reset after --connect-timeout is
    # allowed here but shown.
    s.expect = ("ok", "reset")


def make_half_closed_idle(rng, s):
    # The backend answers and ends; the client stops mid-upload without its FIN, so the
    # connection is half-closed with nothing moving: --half-close-timeout must cut it.
    s.kind, s.up, s.down = "half-closed-idle", 1 * MIB, size(rng, 64 * KIB, 1 * MIB)
    s.client.hold_at, s.client.hold_secs = rng.randrange(64 * KIB, 512 * KIB), 5.0
    s.expect = ("reset", "eof-after-cut")


def make_pipes(rng, s):
    plain(rng, s, 1 * MIB, 8 * MIB)


@dataclass
class Scenario:
    name: str
    what: str
    transfers: int  # per target
    concurrency: int  # per target
    make: object = plain
    proxy_args: tuple = ()
    nofile: int | None = None
    pipe_pages: int | None = None
    backlog: int = 128
    accept_every: float = 0.0
    kill_every: float | None = None  # kill -9 both backends this often...
    down_for: float = 0.4  # ...and start them again after this long (the first kill at 0.3 s)
    after: int = 0  # plain transfers per target once the load is over: must be ok
    pace: float = 0.0  # at least this long between two starts per target


SCENARIOS = [
    Scenario("baseline", "no faults", 200, 4),
    Scenario(
        "backend-killed", "kill -9 both backends every 0.8 s, restart 0.3 s later; a "
        "transfer starts every 40 ms at most, so the kills land mid-load", 150, 4,
        make_killed, kill_every=0.8, down_for=0.3, pace=0.04,
    ),
    Scenario("backend-stalls", "backends stop reading 1-3 s mid-upload", 40, 8, make_stall),
    Scenario(
        "backend-resets", "every other backend connection aborts (SO_LINGER 0) mid-answer",
        100, 4, make_backend_reset,
    ),
    Scenario(
        "backlog-full", "backends listen(1), accept one per 0.5 s; --connect-timeout 2s",
        40, 8, make_backlog, proxy_args=("--connect-timeout", "2s"), backlog=1, accept_every=0.5,
    ),
    Scenario(
        "client-faults", "clients reset mid-upload/-download, half-close then read, "
        "vanish, read 1 B/s for 3 s", 200, 8, make_client_fault,
    ),
    Scenario(
        "clients-vanish", "clients send 128-512 KiB and FIN, read up to 128 KiB of the 1 MiB "
        "answer and close with the rest unread (RST); a rare race, so many rounds",
        1000, 4, make_vanish,
    ),
    Scenario(
        "fds-exhausted", "RLIMIT_NOFILE 40, -c 200, 24 concurrent clients; then 10 plain "
        "transfers", 200, 24, make_fds, proxy_args=("-c", "200"), nofile=40, after=10,
    ),
    Scenario(
        "pipes-exhausted", "fs.pipe-user-pages-soft 256, 12 concurrent 1-8 MiB transfers",
        80, 12, make_pipes, pipe_pages=256,
    ),
    Scenario(
        "half-closed-idle", "backend answers and ends, client stops mid-upload without FIN "
        "for 5 s; --half-close-timeout 2s", 20, 10, make_half_closed_idle,
        proxy_args=("--half-close-timeout", "2s"),
    ),
]

PIPE_PAGES = "/proc/sys/fs/pipe-user-pages-soft"


class Run:
    """One scenario on one driver: backends, proxies, load, settle, verdict."""

    def __init__(self, sc, driver, ringsock, work, first_tid):
        self.sc, self.driver, self.ringsock = sc, driver, ringsock
        self.work = os.path.join(work, sc.name)
        os.makedirs(self.work, exist_ok=True)
        os.chmod(self.work, 0o755)
        self.rng = random.Random(f"{sc.name}-{driver}")
        self.next_tid = first_tid
        self.kills = []  # when the backends were killed
        self.results = {}  # tid -> client record
        self.specs = {}

    def specs_for(self, target, count, make):
        out = []
        for _ in range(count):
            s = Spec(self.next_tid, target, "plain")
            self.next_tid += 1
            make(self.rng, s)
            self.specs[s.tid] = s
            out.append(s)
        return out

    def execute(self):
        sc = self.sc
        old_pages = None
        if sc.pipe_pages:
            old_pages = open(PIPE_PAGES).read().strip()
            with open(PIPE_PAGES, "w") as f:
                f.write(str(sc.pipe_pages))
        try:
            return self._with_processes()
        finally:
            if old_pages is not None:
                with open(PIPE_PAGES, "w") as f:
                    f.write(old_pages)

    def _with_processes(self):
        sc = self.sc
        targets = ["tcp", "unix"]
        self.backends = {t: Backend(t, self.work, sc.backlog, sc.accept_every) for t in targets}
        self.proxies = {}
        try:
            for t in targets:
                self.proxies[t] = Proxy(
                    self.ringsock, self.driver, t, self.backends[t], self.work,
                    list(sc.proxy_args), sc.nofile,
                )
            time.sleep(0.3)
            before = {t: sample(p.pid) for t, p in self.proxies.items()}
            self.peak = {t: dict(before[t]) for t in targets}
            load = {t: self.specs_for(t, sc.transfers, sc.make) for t in targets}
            started = time.monotonic()
            self._load(load, sc.concurrency, kill=sc.kill_every is not None)
            if sc.after:
                after_load = {t: self.specs_for(t, sc.after, make_after) for t in targets}
                self._load(after_load, 1, kill=False)
            load_secs = time.monotonic() - started
            after, settle_secs, settled = self._settle(before)
            alive = {t: p.proc.poll() is None for t, p in self.proxies.items()}
        finally:
            stopped = {t: p.stop() for t, p in self.proxies.items()}
            for b in self.backends.values():
                b.kill()
        out = {"name": sc.name, "what": sc.what, "load_secs": round(load_secs, 1), "targets": {},
               "kills": len(self.kills) if sc.kill_every else None}
        for t in targets:
            out["targets"][t] = self._verdict(t, before[t], after[t], settle_secs, settled[t])
            out["targets"][t].update(proxy_alive=alive[t], stopped_in=stopped[t])
        if sc.pipe_pages:
            out["pipe_budget_kib"] = sc.pipe_pages * os.sysconf("SC_PAGE_SIZE") // 2 // KIB
        return out

    def _load(self, specs, concurrency, kill):
        loop = Loop()
        pending = {t: collections.deque(s) for t, s in specs.items()}
        active = collections.Counter()

        def done(peer):
            self.results[peer.tid] = peer.record()
            active[self.specs[peer.tid].target] -= 1

        next_kill = time.monotonic() + 0.3 if kill else None
        restart_at = None
        next_sample = 0.0
        # Without pacing, transfers started while the backends are down fail at once and
        # the queue drains in one outage.
        next_start = collections.Counter()
        while any(pending.values()) or sum(active.values()):
            for t, queue in pending.items():
                while queue and active[t] < concurrency and time.monotonic() >= next_start[t]:
                    next_start[t] = time.monotonic() + self.sc.pace
                    spec = queue.popleft()
                    address = ("127.0.0.1", self.proxies[t].port)
                    peer = Peer.client(spec, address, loop, done)
                    active[t] += 1
                    loop.add(peer)
            loop.step(0.05)
            now = time.monotonic()
            if next_kill is not None and now >= next_kill and restart_at is None:
                self.kills.append(now)
                for b in self.backends.values():
                    b.kill()
                restart_at = now + self.sc.down_for
            if restart_at is not None and now >= restart_at:
                for b in self.backends.values():
                    b.start()
                restart_at, next_kill = None, now + self.sc.kill_every
            if now >= next_sample:
                self._sample_peaks()
                next_sample = now + SAMPLE_EVERY
        if restart_at is not None:
            for b in self.backends.values():
                b.start()

    def _sample_peaks(self):
        for t, p in self.proxies.items():
            s = sample(p.pid)
            if s:
                for k, v in s.items():
                    self.peak[t][k] = max(self.peak[t][k], v)

    def _settle(self, before):
        start = time.monotonic()
        settled = {}
        while True:
            after = {t: sample(p.pid) for t, p in self.proxies.items()}
            for t in after:
                if t not in settled and is_idle(after[t], before[t]):
                    settled[t] = round(time.monotonic() - start, 1)
            elapsed = time.monotonic() - start
            # The backends' records are read next: their connections must have ended.
            backends_done = all(b.idle() for b in self.backends.values())
            if (len(settled) == len(after) and backends_done) or elapsed > SETTLE_LIMIT:
                return after, elapsed, {t: settled.get(t) for t in after}
            time.sleep(0.5)

    def _verdict(self, target, before, after, settle_secs, settled_in):
        proxy, backend = self.proxies[target], self.backends[target]
        by_tid, headerless = backend.records()
        counts = collections.Counter()
        unexpected, bad = [], []
        for tid, spec in self.specs.items():
            if spec.target != target:
                continue
            client = self.results.get(tid)
            outcome, why = self._classify(spec, client, by_tid.get(tid))
            counts[outcome] += 1
            detail = {"tid": tid, "kind": spec.kind, "outcome": outcome, "why": why,
                      "up": spec.up, "down": spec.down, "client": client, "backend": by_tid.get(tid)}
            if outcome in ("truncated", "corrupt"):
                bad.append(detail)
            elif outcome not in spec.expect:
                unexpected.append(detail)
        # A backend connection cut before its whole header arrived cannot be matched to a
        # transfer; over TCP it must not end in a clean EOF either, since every client
        # sends its header first.
        heads = collections.Counter(h["recv_end"] for h in headerless)
        if target == "tcp":
            for h in headerless:
                if h["recv_end"] == "eof":
                    counts["truncated"] += 1
                    bad.append({"tid": None, "kind": "headerless", "outcome": "truncated",
                                "why": f"backend: clean EOF after {h['received']} header bytes",
                                "backend": h})
        return {
            "counts": {c: counts.get(c, 0) for c in CLASSES},
            "unexpected": len(unexpected),
            "examples": (bad + unexpected)[:6],
            "headerless": dict(heads),
            "before": before,
            "peak": self.peak[target],
            "after": after,
            "settled_in": settled_in,
            "settle_waited": round(settle_secs, 1),
            "log": log_summary(proxy.log_text()),
            "command": " ".join(proxy.cmd),
        }

    def _classify(self, spec, client, backend):
        """The transfer's outcome (its worst direction) and why."""
        unix = spec.target == "unix"
        if client is None:
            return "other", "client never finished"
        cut_by_kill = any(client["started"] < k < client["ended"] for k in self.kills)
        # Any client abort cuts its upload, wherever it stood; so does the proxy's cut of
        # a client that holds its upload past --half-close-timeout.
        plan = spec.client
        client_cut = bool(
            plan.abort_after_sent or plan.abort_after_received or plan.vanish or plan.hold_at
        )
        dirs = []
        # Download: backend -> proxy -> client.
        backend_cut = bool(spec.mode & ABORT) or cut_by_kill
        d = direction(client, backend_cut, unix)
        if d:
            dirs.append(("down", d))
        # Upload: client -> proxy -> backend.
        if backend is not None:
            u = direction(backend, client_cut, unix)
            if u:
                dirs.append(("up", u))
        elif not (
            cut_by_kill
            or client_cut
            or (client["recv_end"] == "reset" and client["received"] == 0)
        ):
            dirs.append(("up", "other"))
        if not dirs:
            return "n/a", "both directions cut by their receivers"
        worst = min(dirs, key=lambda d: SEVERITY.index(d[1]))
        return worst[1], ", ".join(f"{name}: {c}" for name, c in dirs)


def direction(rec, sender_cut, unix):
    """One direction's class from its receiver's record; None when the receiver cut it
    itself (only corruption is still looked for)."""
    if rec["corrupt_at"] is not None:
        return "corrupt"
    end = rec["recv_end"]
    if end in ("aborted", "vanished"):
        return None
    if end == "eof":
        if rec["received"] == rec["recv_len"]:
            return "ok"
        return "eof-after-cut" if sender_cut and unix else "truncated"
    if end == "reset":
        return "reset"
    return "other"


def log_summary(text):
    """The proxy's distinct log messages (numbers masked) with counts, startup lines left
    out."""
    counts = collections.Counter()
    for line in text.splitlines():
        if any(m in line for m in ("listening on", "using the", "connections at once", "with 0 connections open")):
            continue
        key = re.sub(r"\d+", "N", line)[:200]
        counts[key] += 1
    return [f"{n}x {k}" for k, n in counts.most_common(6)]


def run_main(args):
    if os.geteuid() != 0:
        sys.exit("soak.py run needs root (the pipe sysctl, and setpriv for the proxies)")
    os.makedirs(args.work, exist_ok=True)
    os.chmod(args.work, 0o755)
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    report = {"driver": args.driver, "scenarios": [], "failures": []}
    tid = 1 if args.driver == "uring" else 1_000_000
    for sc in chosen:
        print(f"soak: {args.driver}: {sc.name} ...", file=sys.stderr, flush=True)
        run = Run(sc, args.driver, args.ringsock, args.work, tid)
        result = run.execute()
        tid = run.next_tid
        report["scenarios"].append(result)
        for failure in failures_of(result):
            report["failures"].append(f"{args.driver} {sc.name} {failure}")
            print(f"soak: FAIL {args.driver} {sc.name} {failure}", file=sys.stderr, flush=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 1 if report["failures"] else 0


def failures_of(result):
    """What makes the soak fail: truncation, corruption, a transfer that had to succeed
    and did not, resources not back to idle, a dead or stuck proxy, pipes over budget."""
    out = []
    if result.get("kills") is not None and result["kills"] < 2:
        out.append(f"only {result['kills']} backend kills: the load ended before the fault")
    for t, r in result["targets"].items():
        c = r["counts"]
        if c["truncated"] or c["corrupt"]:
            out.append(f"{t}: {c['truncated']} truncated, {c['corrupt']} corrupt")
        if r["unexpected"]:
            out.append(f"{t}: {r['unexpected']} transfers ended outside what the scenario allows")
        if r["settled_in"] is None:
            a, b = r["after"] or {}, r["before"]
            out.append(
                f"{t}: not back to idle after {r['settle_waited']} s: fds {b['fds']}->{a.get('fds')}, "
                f"threads {b['threads']}->{a.get('threads')}, pipe fds {a.get('pipe_fds')}"
            )
        if not r["proxy_alive"]:
            out.append(f"{t}: the proxy exited during the scenario")
        elif r["stopped_in"] is None:
            out.append(f"{t}: the proxy did not exit within 10 s of SIGTERM")
        budget = result.get("pipe_budget_kib")
        if budget and r["peak"]["pipe_kib"] > budget:
            out.append(f"{t}: {r['peak']['pipe_kib']} KiB of pipes, over the {budget} KiB budget")
    return out


# --- report --------------------------------------------------------------------------


def report_main(args):
    for path in args.json:
        with open(path) as f:
            rep = json.load(f)
        print(f"### {rep['driver']}\n")
        if rep["scenarios"]:
            first = rep["scenarios"][0]
            print(f"Proxies run as ({first['name']}, TCP target; other scenarios change their "
                  f"flags): `{first['targets']['tcp']['command']}`\n")
        print("Scenarios: " + "; ".join(f"**{sc['name']}**: {sc['what']}" for sc in rep["scenarios"]) + ".\n")
        print("| scenario | target | transfers | ok | reset | eof-after-cut (unix) | truncated | corrupt | other | n/a | outside expected | headerless backend conns |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for sc in rep["scenarios"]:
            for t, r in sc["targets"].items():
                c = r["counts"]
                heads = ", ".join(f"{n} {k}" for k, n in sorted(r["headerless"].items())) or "-"
                name = sc["name"] + (f" ({sc['kills']} kills)" if sc.get("kills") else "")
                print(f"| {name} | {t} | {sum(c.values())} | " + " | ".join(str(c[k]) for k in CLASSES[:-1])
                      + f" | {c['n/a']} | {r['unexpected']} | {heads} |")
        print()
        print("| scenario | target | load s | RSS MiB idle→peak→after | threads idle→peak→after (iou-wrk peak) | fds idle→peak→after | pipe fds peak→after | pipe KiB peak→after | back to idle in |")
        print("|---|---|---|---|---|---|---|---|---|")
        for sc in rep["scenarios"]:
            for t, r in sc["targets"].items():
                b, p, a = r["before"], r["peak"], r["after"] or {}
                mib = lambda s: f"{s.get('rss_kib', 0) / 1024:.1f}"
                settled = f"{r['settled_in']} s" if r["settled_in"] is not None else f"**not in {r['settle_waited']} s**"
                budget = f" (budget {sc['pipe_budget_kib']})" if sc.get("pipe_budget_kib") else ""
                print(f"| {sc['name']} | {t} | {sc['load_secs']} | {mib(b)}→{mib(p)}→{mib(a)} "
                      f"| {b['threads']}→{p['threads']}→{a.get('threads')} ({p['iou_wrk']}) "
                      f"| {b['fds']}→{p['fds']}→{a.get('fds')} | {p['pipe_fds']}→{a.get('pipe_fds')} "
                      f"| {p['pipe_kib']}→{a.get('pipe_kib')}{budget} | {settled} |")
        print()
        notes = []
        for sc in rep["scenarios"]:
            for t, r in sc["targets"].items():
                for ex in r["examples"]:
                    notes.append(f"- {sc['name']}/{t}: tid {ex['tid']} ({ex['kind']}, up {ex.get('up')}, "
                                 f"down {ex.get('down')}): {ex['outcome']} — {ex['why']}; client "
                                 f"{brief(ex.get('client'))}; backend {brief(ex.get('backend'))}")
                if r["log"]:
                    notes.append(f"- {sc['name']}/{t} proxy log: " + " / ".join(f"`{l}`" for l in r["log"]))
        if notes:
            print("Transfers outside what their scenario allows (at most 6 per row above), and "
                  "the proxies' log messages (numbers as N):\n")
            print("\n".join(notes))
            print()
        if rep["failures"]:
            print("**Failures:**\n\n" + "\n".join(f"- {f}" for f in rep["failures"]) + "\n")
        else:
            print("No failures.\n")


def brief(rec):
    if not rec:
        return "none"
    return (f"got {rec['received']}/{rec['recv_len']} then {rec['recv_end']}, sent {rec['sent']} "
            f"then {rec['send_end']}" + (f", corrupt at {rec['corrupt_at']}" if rec["corrupt_at"] is not None else ""))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--ringsock", required=True)
    run.add_argument("--driver", choices=["uring", "epoll"], required=True)
    run.add_argument("--work", required=True)
    run.add_argument("--json", required=True)
    run.add_argument("--only", nargs="*")
    backend = sub.add_parser("backend")
    backend.add_argument("--listen", required=True)
    backend.add_argument("--log", required=True)
    backend.add_argument("--backlog", type=int, default=128)
    backend.add_argument("--accept-every", type=float, default=0.0)
    rep = sub.add_parser("report")
    rep.add_argument("json", nargs="+")
    args = parser.parse_args()
    if args.command == "run":
        sys.exit(run_main(args))
    if args.command == "backend":
        backend_main(args)
    else:
        report_main(args)


if __name__ == "__main__":
    main()
