#!/usr/bin/env python3
# Report generator for perf/mirror.sh (python3 stdlib only).
#
# Usage: perf/report_mirror.py RAW --rounds N --secs S ... (see the arguments below)
#          > perf/results/mirror-YYYY-MM-DD.md
#
# Reads RAW, what perf/mirror.sh collected: per contender, round and phase a header
# "=== LABEL | ROUND | MODE" (MODE idle, random, zipf or slow; "... NOT MEASURED" when the
# curl check failed), then "--- cold" (wrk's output, not for idle/slow), "--- probe" (wrk
# --latency on the hot file) and "--- server" ("key: value" lines: cpu_s, threads, rss_kib,
# evict passes, pool_cached_mib, slow_* from perf/mirror_tool.py slow).
# Writes the Markdown report to stdout: ranges (min–max over rounds) per contender, the
# issue-11 targets as ratios within each round, every round's numbers, and RAW itself.
import argparse, os, platform, re

ap = argparse.ArgumentParser()
ap.add_argument("raw")
for k in ("rounds", "secs", "gib", "files", "file-mib", "conns", "probe-delay-ms", "slow-clients", "slow-rate", "slow-secs", "workers"):
    ap.add_argument("--" + k, type=int, required=True)
for k in ("nginx", "ringsock", "fs", "contenders"):
    ap.add_argument("--" + k, required=True)
a = ap.parse_args()
text = open(a.raw).read()
labels = [l for l in a.contenders.split("|") if l]

UNIT_T = {"us": 1, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
UNIT_B = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}


def wrk(body):
    r = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h), ([\d.]+)([KMGT]?B) read", body)
    if m:
        r["n"] = int(m.group(1))
        r["dur"] = float(m.group(2)) * UNIT_T[m.group(3)] / 1e6
        r["bytes"] = float(m.group(4)) * UNIT_B[m.group(5)]
    for pct in ("50", "99"):
        m = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s|m|h)\b" % pct, body, re.M)
        if m: r["p" + pct] = float(m.group(1)) * UNIT_T[m.group(2)]
    m = re.search(r"^\s+Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s|m|h)\b", body, re.M)
    if m: r["max"] = float(m.group(1)) * UNIT_T[m.group(2)]
    errs = []
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", body)
    if m and any(int(x) for x in m.groups()):
        errs.append("socket errors: connect %s, read %s, write %s, timeout %s" % m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", body)
    if m: errs.append("%s non-2xx/3xx" % m.group(1))
    m = re.search(r"wrk exited (\d+)", body)
    if m: errs.append("wrk exited %s" % m.group(1))
    r["errors"] = errs
    return r


runs = {}   # (label, round, mode) -> dict
failed = []
for block in re.split(r"^=== ", text, flags=re.M)[1:]:
    head, _, body = block.partition("\n")
    m = re.match(r"(.+) \| (\d+) \| (\w+)( NOT MEASURED.*)?$", head)
    if not m: continue
    label, rnd, mode = m.group(1), int(m.group(2)), m.group(3)
    if m.group(4):
        failed.append("%s round %d %s: not measured (failed verification)" % (label, rnd, mode)); continue
    secs = dict(re.findall(r"^--- (\w+)\n(.*?)(?=^--- |\Z)", body, re.M | re.S))
    r = {"cold": wrk(secs["cold"]) if "cold" in secs else None, "probe": wrk(secs.get("probe", ""))}
    for k, v in re.findall(r"^(\w+): (.*)$", secs.get("server", ""), re.M):
        r[k] = v
    runs[(label, rnd, mode)] = r


def num(r, k, i=0):
    try: return float(r[k].split()[i])
    except (KeyError, IndexError, ValueError): return None


def lat(us):
    if us is None: return "—"
    if us < 1000: return "%.0f µs" % us
    if us < 1e6: return "%.3g ms" % (us / 1000) if us < 1e4 else "%.0f ms" % (us / 1000)
    return "%.2f s" % (us / 1e6)


def rng(vals, f):
    vals = [v for v in vals if v is not None]
    if not vals: return "—"
    lo, hi = f(min(vals)), f(max(vals))
    return lo if lo == hi else "%s–%s" % (lo, hi)


def cold_mbs(r):
    c = r and r["cold"]
    return c["bytes"] / c["dur"] / 2**20 if c and c.get("dur") else None


def sent(r):
    """Bytes the server sent in the phase: to wrk's cold connections or to the slow clients."""
    if r is None: return None
    if r["cold"] and r["cold"].get("bytes"): return r["cold"]["bytes"]
    return num(r, "slow_bytes")


def cpu_ms_gib(label, rnd, mode):
    r = runs.get((label, rnd, mode))
    cpu, b = r and num(r, "cpu_s"), sent(r)
    return cpu * 1000 / (b / 2**30) if cpu is not None and b else None


def ratio_p99(label, rnd, mode):
    r, i = runs.get((label, rnd, mode)), runs.get((label, rnd, "idle"))
    if r and i and r["probe"].get("p99") and i["probe"].get("p99"): return r["probe"]["p99"] / i["probe"]["p99"]
    return None


def get(label, rnd, mode, f):
    r = runs.get((label, rnd, mode))
    return f(r) if r else None


R = range(1, a.rounds + 1)


def loadavg(when):
    m = re.search(r"^loadavg at the %s: (\S+ \S+ \S+)" % when, text, re.M)
    return m.group(1) if m else "?"


short = a.secs < 15 or a.rounds < 3 or a.gib < 4 or a.slow_clients < 1000
date = os.popen("date -u +'%Y-%m-%d %H:%M UTC'").read().strip()
print("# Cold-cache mirror benchmark: ringsock serve / nginx / nginx `aio threads`\n")
if short:
    print("**Short validation run — not a measurement** (ROUNDS=%d, SECS=%d, MIRROR_GIB=%d, %d slow clients; "
          "the defaults are 3, 15, 4 and 1,000).\n" % (a.rounds, a.secs, a.gib, a.slow_clients))
print("One run, %s, kernel %s, %d CPUs, %d MiB RAM; generated by perf/mirror.sh. Client and servers share the "
      "cores, loopback only. Load average (1, 5, 15 min) at the start %s, at the end %s: anything else "
      "running (a compiler) shows here and in the latencies.\n" % (date, platform.release(), os.cpu_count(),
      os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >> 20, loadavg("start"), loadavg("end")))
print("- Contenders, %d workers each: ringsock %s (`serve --root POOL --threads %d`); nginx %s "
      "(`worker_processes %d; sendfile on; tcp_nopush on; access_log off;`), and the same with `aio threads;` "
      "(the default thread pool: 32 threads per worker, counted in its threads)." % (a.workers, a.ringsock, a.workers, a.nginx, a.workers))
print("- Pool: %d files of %d MiB (%d GiB) on %s, kept out of the page cache with `posix_fadvise(DONTNEED)` "
      "before each phase and every second during it; the hot 4 KiB `dists/stable/InRelease` is never evicted. "
      "\"Pool cached\" (per-round table): what the page cache had gathered of the pool between two eviction "
      "passes (cachestat(2) just before each pass), max / mean." % (a.files, a.file_mib, a.gib, a.fs))
print("- Each phase lasts %d s on the same server process (fresh per contender and round): **idle** = the probe "
      "alone; **random** = the probe beside `wrk -t1 -c%d` GETting uniformly random pool files; **zipf** = the "
      "same with file k drawn with weight 1/k. The probe is `wrk -t1 -c1 --latency` on the hot file, %s."
      % (a.secs, a.conns, "pausing %d ms (wrk's Lua `delay()`, not counted in the latency) between a response and "
         "its next request" % a.probe_delay_ms if a.probe_delay_ms else "in a closed loop (no pause: it spins a core, "
         "samples fast moments far more often than stalls, and its requests count in the server's CPU)"))
print("- Cold MB/s: bytes wrk read / its duration, MB = 2^20 bytes. CPU ms/GiB: the server's utime + stime "
      "(all threads, nginx master + workers) during the phase, probe included, per GiB wrk (or the slow clients) "
      "read. Part of loopback delivery is charged to the sender. Threads: max of /proc/PID/task "
      "sampled every 0.2 s (io-wq workers and aio pools included).")
print("- Slow clients (a fresh server): %d connections, each reading one random pool file at %d B/s through a "
      "16 KiB SO_RCVBUF for %d s, the probe running beside them. RSS: VmRSS summed over the server's processes; "
      "idle = before the first connection; per 1,000 clients = (peak − idle) × 1,000 / clients connected.\n"
      % (a.slow_clients, a.slow_rate, a.slow_secs))
print("Ranges are min–max over %d round%s.\n" % (a.rounds, "s" if a.rounds > 1 else ""))

for mode, title in (("random", "Uniformly random cold downloads + hot probe"), ("zipf", "Zipf-like cold downloads (weight 1/k) + hot probe")):
    print("## %s\n" % title)
    print("| server | cold MB/s | hot p50 | hot p99 | hot max | p99 idle | p99 / idle | CPU ms/GiB | threads max |")
    print("|---|---|---|---|---|---|---|---|---|")
    for l in labels:
        print("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            l,
            rng([get(l, i, mode, cold_mbs) for i in R], lambda v: "{:,.0f}".format(v)),
            rng([get(l, i, mode, lambda r: r["probe"].get("p50")) for i in R], lat),
            rng([get(l, i, mode, lambda r: r["probe"].get("p99")) for i in R], lat),
            rng([get(l, i, mode, lambda r: r["probe"].get("max")) for i in R], lat),
            rng([get(l, i, "idle", lambda r: r["probe"].get("p99")) for i in R], lat),
            rng([ratio_p99(l, i, mode) for i in R], lambda v: "%.0f×" % v if v >= 10 else "%.1f×" % v),
            rng([cpu_ms_gib(l, i, mode) for i in R], lambda v: "{:,.0f}".format(v)),
            rng([get(l, i, mode, lambda r: num(r, "threads", 3)) for i in R], lambda v: "%d" % v)))
    print()

print("## Slow clients\n")
print("| server | answered 200 / clients | rate per client (median) | RSS idle | RSS peak | RSS per 1,000 clients | threads idle | threads max | hot p99 | CPU ms/GiB |")
print("|---|---|---|---|---|---|---|---|---|---|")


def per1000(r):
    c, i, m = num(r, "slow_connected"), num(r, "slow_rss_idle_kib"), num(r, "slow_rss_max_kib")
    return (m - i) * 1000 / c / 1024 if c and i is not None and m is not None else None


mib = lambda v: "%.1f MiB" % v
for l in labels:
    print("| %s | %s / %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
        l,
        rng([get(l, i, "slow", lambda r: num(r, "slow_status200")) for i in R], lambda v: "{:,.0f}".format(v)),
        "{:,}".format(a.slow_clients),
        rng([get(l, i, "slow", lambda r: num(r, "slow_rate_median")) for i in R], lambda v: "%.0f KB/s" % (v / 1000)),
        rng([get(l, i, "slow", lambda r: num(r, "slow_rss_idle_kib")) for i in R], lambda v: mib(v / 1024)),
        rng([get(l, i, "slow", lambda r: num(r, "slow_rss_max_kib")) for i in R], lambda v: mib(v / 1024)),
        rng([get(l, i, "slow", per1000) for i in R], mib),
        rng([get(l, i, "slow", lambda r: num(r, "slow_threads_idle")) for i in R], lambda v: "%d" % v),
        rng([get(l, i, "slow", lambda r: num(r, "slow_threads_max")) for i in R], lambda v: "%d" % v),
        rng([get(l, i, "slow", lambda r: r["probe"].get("p99")) for i in R], lat),
        rng([cpu_ms_gib(l, i, "slow") for i in R], lambda v: "{:,.0f}".format(v))))
print()

print("## Issue 11 targets (ratios within each round, min–max)\n")
ref = "nginx, sendfile + aio threads"
for l in [l for l in labels if l.startswith("ringsock")]:
    def check(name, vals, ok, fmt="%.2f×"):
        vals = [v for v in vals if v is not None]
        if not vals:
            print("- %s, %s: no ratio (a contender has no result)" % (l, name)); return
        met = sum(1 for v in vals if ok(v))
        verdict = "met" if met == len(vals) else ("NOT met" if met == 0 else "met in %d of %d rounds" % (met, len(vals)))
        print("- %s, %s: **%s** — %s" % (l, name, rng(vals, lambda v: fmt % v), verdict))
    div = lambda x, y: x / y if x is not None and y else None
    for mode in ("random", "zipf"):
        p99 = lambda lab, i: get(lab, i, mode, lambda r: r["probe"].get("p99"))
        check("hot p99 under %s load vs %s (target ≤ 0.5×)" % (mode, ref), [div(p99(l, i), p99(ref, i)) for i in R], lambda v: v <= 0.5)
        check("hot p99 under %s load vs its own idle p99 (target ≤ 5×)" % mode, [ratio_p99(l, i, mode) for i in R], lambda v: v <= 5)
        check("cold throughput (%s) vs %s (target ≥ 1.0×)" % (mode, ref),
              [div(get(l, i, mode, cold_mbs), get(ref, i, mode, cold_mbs)) for i in R], lambda v: v >= 1.0)
        for other in ("nginx, sendfile", ref):
            check("CPU per GiB (%s) vs %s (target ≤ 1.0×)" % (mode, other),
                  [div(cpu_ms_gib(l, i, mode), cpu_ms_gib(other, i, mode)) for i in R], lambda v: v <= 1.0)
errs = ["%s round %d %s %s: %s" % (k[0], k[1], k[2], part, "; ".join(r[part]["errors"]))
        for k, r in sorted(runs.items()) for part in ("cold", "probe") if r[part] and r[part]["errors"]]
errs += ["%s round %d slow: %s" % (k[0], k[1], ", ".join("%s %s" % (x, r[x]) for x in
         ("slow_other_status", "slow_connect_errors", "slow_reset", "slow_eof_early") if r.get(x, "0") != "0"))
         for k, r in sorted(runs.items()) if k[2] == "slow" and any(r.get(x, "0") != "0" for x in
         ("slow_other_status", "slow_connect_errors", "slow_reset", "slow_eof_early"))]
fails = [l for l in text.splitlines() if l.startswith(("FAILED", "DIED")) or " did not " in l] + failed
print("- errors during runs: %s" % ("; ".join(errs) or "none"))
print("- failed checks: %s" % ("; ".join(fails) or "none"))

print("\n## Every round\n")
print("| server | round | phase | cold MB/s | GiB sent | cold req | probe req | p50 | p99 | max | CPU s | CPU ms/GiB | threads max | RSS max | pool cached max / mean |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
order = {"idle": 0, "random": 1, "zipf": 2, "slow": 3}
for (l, i, mode), r in sorted(runs.items(), key=lambda kv: (kv[0][1], labels.index(kv[0][0]) if kv[0][0] in labels else 99, order.get(kv[0][2], 9))):
    c, p = r["cold"] or {}, r["probe"]
    g, b = cpu_ms_gib(l, i, mode), sent(r)
    rss = num(r, "rss_kib", 3) if mode != "slow" else num(r, "slow_rss_max_kib")
    thr = num(r, "threads", 3) if mode != "slow" else num(r, "slow_threads_max")
    print("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
        l, i, mode,
        "{:,.0f}".format(cold_mbs(r)) if c else "—",
        "%.2f" % (b / 2**30) if b else "—",
        "{:,}".format(c["n"]) if "n" in c else "—", "{:,}".format(p["n"]) if "n" in p else "—", lat(p.get("p50")), lat(p.get("p99")), lat(p.get("max")),
        r.get("cpu_s", "—"),
        "{:,.0f}".format(g) if g is not None else "—",
        "%d" % thr if thr is not None else "—",
        "%.1f MiB" % (rss / 1024) if rss is not None else "—",
        "%s / %s MiB" % tuple(r["pool_cached_mib"].split()[1::2]) if "pool_cached_mib" in r else "—"))

print("\n## Raw output\n\n```")
print(text.rstrip())
print("```")
