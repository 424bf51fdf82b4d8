#!/usr/bin/env python3
# Helpers for perf/mirror.sh (python3 stdlib only). Every loop here is bounded in time.
#
#   mirror_tool.py tree DIR FILES MIB
#       DIR/pool/00000.deb ... (FILES files of MIB MiB each, random contents, fsync'ed so
#       that they can be evicted) and the hot DIR/dists/stable/InRelease (4 KiB of text).
#       Files already there with the right size are kept (a reused tree). Evicts the pool.
#   mirror_tool.py evict DIR [--every S --for T]
#       posix_fadvise(DONTNEED) over every file under DIR/pool (never DIR/dists): once, or
#       every S seconds for at most T seconds (or until SIGTERM). No root needed. In the loop
#       it prints the passes and, from cachestat(2) before each pass, how much of the pool the
#       page cache had gathered since the pass before ("pool_cached_mib: max M mean M").
#   mirror_tool.py sample --pids "P ..." --for T [--every S]
#       Samples the processes' summed VmRSS and thread count (/proc/P/task, which includes
#       io_uring io-wq workers and nginx's aio thread pool) for T seconds; prints
#       "threads: first N max N" and "rss_kib: first N max N".
#   mirror_tool.py slow --port P --files N --pids "P ..." [--clients 1000 --rate 100000
#                       --secs 15 --rcvbuf 16384 --ramp 1.5]
#       CLIENTS connections, each GETting one random pool file and reading it at RATE
#       bytes/s through a SO_RCVBUF of RCVBUF bytes (set before connect), connected over
#       RAMP seconds, all closed SECS seconds after the first connect. Samples the server's
#       RSS and threads (idle before the first connect, then every 0.25 s) and prints
#       "key: value" lines (see the end of slow()).
import argparse, asyncio, os, random, signal, socket, sys, time

HOT = "dists/stable/InRelease"


def pool_files(root):
    pool = os.path.join(root, "pool")
    return sorted(os.path.join(pool, f) for f in os.listdir(pool) if f.endswith(".deb"))


class Cachestat:
    """cachestat(2) (Linux 6.5+): the pages of a file in the page cache, without blocking."""
    NR = {"x86_64": 451, "aarch64": 451}.get(os.uname().machine)

    def __init__(self):
        import ctypes
        self.c = ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.rng = (ctypes.c_uint64 * 2)(0, 0)   # off 0, len 0: the whole file
        self.out = (ctypes.c_uint64 * 5)()
        self.ok = self.NR is not None

    def pages(self, fd):
        if not self.ok: return None
        if self.libc.syscall(self.NR, fd, self.c.byref(self.rng), self.c.byref(self.out), 0) != 0:
            self.ok = False   # ENOSYS on older kernels: stop asking
            return None
        return self.out[0]


def evict_once(files, cs=None):
    """Evicts files; returns the bytes they had in the page cache just before (or None)."""
    cached = 0 if cs and cs.ok else None
    for path in files:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
        except PermissionError:
            fd = os.open(path, os.O_RDONLY)
        try:
            if cached is not None:
                p = cs.pages(fd)
                cached = None if p is None else cached + p * os.sysconf("SC_PAGE_SIZE")
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return cached


def cmd_tree(a):
    size = a.mib << 20
    os.makedirs(os.path.join(a.dir, "pool"), exist_ok=True)
    os.makedirs(os.path.join(a.dir, os.path.dirname(HOT)), exist_ok=True)
    made = 0
    for i in range(a.files):
        path = os.path.join(a.dir, "pool", "%05d.deb" % i)
        try:
            if os.stat(path).st_size == size:
                continue
        except FileNotFoundError:
            pass
        with open(path, "wb") as f:
            for _ in range(0, size, 1 << 20):   # random throughout: nothing to share or compress
                f.write(os.urandom(min(1 << 20, size)))
            f.flush()
            os.fsync(f.fileno())   # dirty pages cannot be evicted
        made += 1
    hot = os.path.join(a.dir, HOT)
    rnd = random.Random(11)
    lines = ["Origin: ringsock-mirror-bench", "Suite: stable", "SHA256:"]
    while sum(len(l) + 1 for l in lines) < 4096:
        lines.append(" %064x %9d main/binary-amd64/Packages" % (rnd.getrandbits(256), rnd.randrange(10**8)))
    with open(hot, "w") as f:
        f.write("\n".join(lines)[:4095] + "\n")
    evict_once(pool_files(a.dir))
    print("tree: %d files of %d MiB in %s (%d written now), hot file %s (%d bytes)"
          % (a.files, a.mib, a.dir, made, HOT, os.path.getsize(hot)))


def on_term(signum, frame):
    raise KeyboardInterrupt


def cmd_evict(a):
    files = pool_files(a.dir)
    end = time.monotonic() + a.for_
    passes = 0
    cs = Cachestat() if a.every > 0 else None
    signal.signal(signal.SIGTERM, on_term)   # perf/mirror.sh stops it at the end of a phase
    cached = []
    try:
        while True:
            t = time.monotonic()
            c = evict_once(files, cs)
            if passes > 0 and c is not None:   # the first pass follows an eviction already
                cached.append(c)
            passes += 1
            if a.every <= 0 or t + a.every >= end or passes >= 100000:
                break
            time.sleep(max(0.0, t + a.every - time.monotonic()))
    except KeyboardInterrupt:
        pass
    finally:
        if a.every > 0:
            print("evict: %d passes" % passes)
            if cached:   # what the page cache had gathered of the pool since the pass before
                print("pool_cached_mib: max %.0f mean %.0f" % (max(cached) / 2**20, sum(cached) / len(cached) / 2**20))


def proc_sample(pids):
    """(threads, rss_kib) summed over the live processes in pids."""
    threads = rss = 0
    for p in pids:
        try:
            threads += len(os.listdir("/proc/%d/task" % p))
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                        break
        except (FileNotFoundError, ProcessLookupError):
            pass
    return threads, rss


def cmd_sample(a):
    pids = [int(p) for p in a.pids.split()]
    end = time.monotonic() + a.for_
    first = proc_sample(pids)
    mt, mr = first
    n = 0
    while time.monotonic() < end and n < 100000:
        time.sleep(a.every)
        t, r = proc_sample(pids)
        mt, mr = max(mt, t), max(mr, r)
        n += 1
    print("threads: first %d max %d" % (first[0], mt))
    print("rss_kib: first %d max %d" % (first[1], mr))


async def slow(a):
    pids = [int(p) for p in a.pids.split()]
    loop = asyncio.get_running_loop()
    nfiles = a.files
    rnd = random.Random(a.seed)
    stats = {"connected": 0, "status200": 0, "other_status": 0, "connect_errors": 0,
             "reset": 0, "eof_early": 0, "bytes": 0}
    rates = []
    samples = []   # (t, threads, rss)
    idle = proc_sample(pids)
    t0 = time.monotonic()
    deadline = t0 + a.secs

    async def client(i, path):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, a.rcvbuf)
        s.setblocking(False)
        got = 0
        first = None
        try:
            try:
                await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", a.port)),
                                       max(0.1, deadline - time.monotonic()))
            except (OSError, asyncio.TimeoutError):
                stats["connect_errors"] += 1
                return
            stats["connected"] += 1
            await loop.sock_sendall(s, ("GET /%s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                        "User-Agent: mirror-slow\r\n\r\n" % path).encode())
            head = b""
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    data = await asyncio.wait_for(loop.sock_recv(s, a.chunk), left)
                except asyncio.TimeoutError:
                    break
                except OSError:
                    stats["reset"] += 1
                    break
                if not data:
                    stats["eof_early"] += 1
                    break
                now = time.monotonic()
                if first is None:
                    first = now
                    head = data[:16]
                    if head.startswith(b"HTTP/1.1 200"):
                        stats["status200"] += 1
                    else:
                        stats["other_status"] += 1
                        break
                got += len(data)
                ahead = got / a.rate - (now - first)   # seconds ahead of the rate
                if ahead > 0:
                    await asyncio.sleep(min(ahead, max(0.0, deadline - now)))
        finally:
            stats["bytes"] += got
            if first is not None:
                span = time.monotonic() - first
                if span > 1.0:
                    rates.append(got / span)
            s.close()

    async def sampler():
        while time.monotonic() < deadline + 0.1:
            t, r = proc_sample(pids)
            samples.append((time.monotonic() - t0, t, r))
            await asyncio.sleep(0.25)

    smp = asyncio.ensure_future(sampler())
    tasks = []
    step = a.ramp / max(1, a.clients)
    for i in range(a.clients):
        path = "pool/%05d.deb" % rnd.randrange(nfiles)
        tasks.append(asyncio.ensure_future(client(i, path)))
        if (i + 1) % 50 == 0:
            await asyncio.sleep(step * 50)
    await asyncio.wait(tasks, timeout=a.secs + 5)
    for t in tasks:
        t.cancel()
    await asyncio.wait_for(smp, 5)
    steady = [s for s in samples if s[0] >= a.ramp + 1.0] or samples
    rates.sort()
    med = rates[len(rates) // 2] if rates else 0
    print("slow_clients: %d" % a.clients)
    print("slow_rate_target: %d" % a.rate)
    print("slow_secs: %g" % a.secs)
    for k in ("connected", "status200", "other_status", "connect_errors", "reset", "eof_early", "bytes"):
        print("slow_%s: %d" % (k, stats[k]))
    print("slow_rate_median: %.0f" % med)
    print("slow_rate_min: %.0f" % (rates[0] if rates else 0))
    print("slow_rss_idle_kib: %d" % idle[1])
    print("slow_rss_max_kib: %d" % max(s[2] for s in samples))
    print("slow_rss_steady_kib: %d" % sorted(s[2] for s in steady)[len(steady) // 2])
    print("slow_threads_idle: %d" % idle[0])
    print("slow_threads_max: %d" % max(s[1] for s in samples))
    print("slow_samples: %d" % len(samples))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("tree"); p.add_argument("dir"); p.add_argument("files", type=int); p.add_argument("mib", type=int)
    p = sub.add_parser("evict"); p.add_argument("dir")
    p.add_argument("--every", type=float, default=0); p.add_argument("--for", dest="for_", type=float, default=0)
    p = sub.add_parser("sample"); p.add_argument("--pids", required=True)
    p.add_argument("--for", dest="for_", type=float, required=True); p.add_argument("--every", type=float, default=0.2)
    p = sub.add_parser("slow")
    p.add_argument("--port", type=int, required=True); p.add_argument("--files", type=int, required=True)
    p.add_argument("--pids", required=True); p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--rate", type=float, default=100000); p.add_argument("--secs", type=float, default=15)
    p.add_argument("--rcvbuf", type=int, default=16384); p.add_argument("--chunk", type=int, default=16384)
    p.add_argument("--ramp", type=float, default=1.5); p.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.cmd == "tree":
        cmd_tree(a)
    elif a.cmd == "evict":
        cmd_evict(a)
    elif a.cmd == "sample":
        cmd_sample(a)
    else:
        asyncio.run(slow(a))


if __name__ == "__main__":
    sys.exit(main())
