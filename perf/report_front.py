#!/usr/bin/env python3
"""Turns perf/front.sh's raw output into the markdown report: ranges over rounds."""

import re
import sys
from collections import defaultdict

raw, secs, conns, nginx, aptly, ringsock = sys.argv[1:7]
text = open(raw).read()

version = defaultdict(list)  # name -> [(req/s, µs cpu/req, p50, p99)]
upload = defaultdict(list)  # name -> [(cpu s/GiB, wall s, peak MiB)]
failures = [l for l in text.splitlines() if l.startswith("FAILED")]


def ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


for block in text.split("=== ")[1:]:
    head, _, body = block.partition("\n")
    kind, name = head.split()[0], head.split()[1]
    if kind == "version":
        rps = re.search(r"Requests/sec:\s+([\d.]+)", body)
        cpu = re.search(r"cpu: forwarder ([\d.]+) s", body)
        p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", body)
        p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", body)
        total = re.search(r"(\d+) requests in", body)
        if rps and cpu and total:
            version[name].append((
                float(rps.group(1)),
                float(cpu.group(1)) / int(total.group(1)) * 1e6,
                ms(*p50.groups()),
                ms(*p99.groups()),
            ))
    elif kind == "upload":
        m = re.search(r"forwarder ([\d.]+) s cpu, ([\d.]+) s wall, peak (\d+) KiB", body)
        if m:
            upload[name].append((float(m.group(1)), float(m.group(2)), int(m.group(3)) / 1024))


def span(values, fmt):
    lo, hi = min(values), max(values)
    return fmt.format(lo) if fmt.format(lo) == fmt.format(hi) else f"{fmt.format(lo)}–{fmt.format(hi)}"


def col(rows, i, fmt):
    return span([r[i] for r in rows], fmt) if rows else "—"


labels = {
    "ringsock-serve": "ringsock serve --route",
    "nginx": "nginx proxy_pass (as shipped: request buffering on)",
    "nginx-stream": "nginx proxy_pass, proxy_request_buffering off",
    "ringsock-proxy": "ringsock proxy (blind hop, reference)",
}
print(f"# The aptly front: ringsock serve --route vs nginx proxy_pass ({len(next(iter(version.values()), []))} rounds)\n")
print(f"ringsock {ringsock}, nginx {nginx}, aptly {aptly}; one worker each; aptly api serve on a "
      "Unix socket behind each; loopback; 2 shared cores. `perf/front.sh`.\n")
print(f"## GET /api/version, wrk -t1 -c{conns}, {secs} s per run\n")
print("| forwarder | req/s | own CPU µs/req | p50 ms | p99 ms |")
print("|---|---|---|---|---|")
for name in ["ringsock-serve", "nginx", "ringsock-proxy"]:
    rows = version.get(name, [])
    print(f"| {labels[name]} | {col(rows, 0, '{:.0f}')} | {col(rows, 1, '{:.1f}')} | "
          f"{col(rows, 2, '{:.2f}')} | {col(rows, 3, '{:.2f}')} |")
if version.get("ringsock-serve") and version.get("nginx"):
    n = len(version["nginx"])
    cpu = [version["ringsock-serve"][i][1] / version["nginx"][i][1] for i in range(n)]
    rps = [version["ringsock-serve"][i][0] / version["nginx"][i][0] for i in range(n)]
    print(f"\nPer round, ringsock / nginx: CPU per request {span(cpu, '{:.2f}')}× (target ≤ 0.7×), "
          f"requests/s {span(rps, '{:.2f}')}× (target ≥ 1.2×).")
print("\n## 1 GiB upload, curl -F to /api/files/\n")
print("| forwarder | own CPU s/GiB | wall s | peak RSS MiB |")
print("|---|---|---|---|")
for name in ["ringsock-serve", "nginx", "nginx-stream"]:
    rows = upload.get(name, [])
    print(f"| {labels[name]} | {col(rows, 0, '{:.2f}')} | {col(rows, 1, '{:.1f}')} | {col(rows, 2, '{:.1f}')} |")
if upload.get("ringsock-serve") and upload.get("nginx"):
    n = len(upload["nginx"])
    cpu = [upload["ringsock-serve"][i][0] / upload["nginx"][i][0] for i in range(n)]
    print(f"\nPer round, ringsock / nginx (as shipped): CPU per GiB {span(cpu, '{:.2f}')}× (target ≤ 0.5×).")
print("\nnginx as shipped writes the whole body to a temporary file before it passes any of it "
      "on (proxy_request_buffering on), then reads it back; ringsock streams it, spliced "
      "socket → pipe → socket, and holds no more memory for 1 GiB than for 1 KiB.")
if failures:
    print("\n## Failures\n")
    for f in failures:
        print(f"- {f}")
