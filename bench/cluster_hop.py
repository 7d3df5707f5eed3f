#!/usr/bin/env python3
"""What one hop between the nodes of a cluster costs a visitor.

Two release opennotrd nodes of one cluster (etcd on loopback), node-b with
a client whose http and h2c forwards lead to a local nginx serving a 1 KiB
file; node-a has no client. The same requests go to node-b's gateway
(served there) and to node-a's (carried to node-b over a node link, one
hop), in interleaved rounds: requests/s and p50/p99 latency with wrk
(HTTP/1.1 keep-alive) and h2load (h2c), and a 512 MiB download. (HTTPS is
carried by SNI, which wrk does not send to 127.0.0.1: not measured here;
it is carried before any TLS, like the h2c bytes.) The report, with the ratios carried / local, replaces the
"Through another node of a cluster" section of docs/benchmarks.md.

Everything on 127.0.0.1 of one 2-core machine: the nodes, nginx and the
load generator share the cores, so the ratio, not the absolute figures, is
the point. A benchmark, not a test: CI never runs it.

Usage: python3 bench/cluster_hop.py [--time 8] [--rounds 3] [--connections 64] [--bin-dir DIR] [--no-report]
"""

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  the gateway suite's helpers (nginx, wrk, h2load, curl)

SECTION = "## Through another node of a cluster"


def etcd_start(procs, tmp):
    client, peer = run.free_port(), run.free_port()
    data = os.path.join(tmp, "etcd")
    procs.start(["etcd", "--name", "bench", "--data-dir", data,
                 "--listen-client-urls", f"http://127.0.0.1:{client}",
                 "--advertise-client-urls", f"http://127.0.0.1:{client}",
                 "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                 "--initial-cluster", f"bench=http://127.0.0.1:{peer}"])
    run.wait_port(client)
    return f"http://127.0.0.1:{client}"


def node(procs, tmp, release, name, etcd, crt, key, env):
    """Starts node `name`; its (control, http, https, h2c) ports."""
    ports = [run.free_port() for _ in range(4)]
    ctrl, gh, gs, g2 = ports
    conf = os.path.join(tmp, f"{name}.yaml")
    with open(conf, "w") as f:
        f.write(f"""server:
  listen: "127.0.0.1:{ctrl}"
  authKey: "bench-key-0123456789"
  domain: "notr.test"
dhcp:
  cidr: "100.64.{250 if name == 'node-a' else 251}.1/24"
plugin:
  http: '{{"listen": "127.0.0.1:{gh}"}}'
  https: '{{"listen": "127.0.0.1:{gs}", "cert": "{crt}", "key": "{key}"}}'
  h2c: '{{"listen": "127.0.0.1:{g2}"}}'
cluster:
  node: {name}
  etcdEndpoints: ["{etcd}"]
  key: "bench-cluster-key-0123456789"
""")
    procs.start([os.path.join(release, "opennotrd"), "-c", conf], env=env)
    run.wait_port(ctrl)
    return ports


def suite(release, args, tmp):
    for tool, pkg in (("wrk", "wrk"), ("h2load", "nghttp2-client"), ("nginx", "nginx-light"), ("etcd", "etcd-server")):
        if not shutil.which(tool):
            subprocess.run(["apt-get", "install", "-y", "-qq", pkg], check=True)
    crt, key = run.make_cert(tmp)
    www = os.path.join(tmp, "www")
    os.makedirs(www, exist_ok=True)
    with open(os.path.join(www, "index.html"), "wb") as f:
        f.write(b"x" * (run.BODY_SIZE - 1) + b"\n")
    with open(os.path.join(www, "big.bin"), "wb") as f:
        f.truncate(run.DOWNLOAD_SIZE)
    procs = run.Procs()
    samples = {}
    try:
        svc, svc_h2c = run.free_port(), run.free_port()
        run.nginx_start(procs, tmp, "service", ("1", f"""
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{svc};
    listen 127.0.0.1:{svc_h2c} http2;
    http2_max_requests 1000000;
    root {www};
  }}"""))
        for p in (svc, svc_h2c):
            run.wait_port(p)
        env = dict(os.environ, RUST_LOG="warn")
        etcd = etcd_start(procs, tmp)
        a = node(procs, tmp, release, "node-a", etcd, crt, key, env)
        b = node(procs, tmp, release, "node-b", etcd, crt, key, env)
        cconf = os.path.join(tmp, "client.yaml")
        with open(cconf, "w") as f:
            f.write(f"""serverAddr: "127.0.0.1:{b[0]}"
key: "bench-key-0123456789"
domain: "{run.GW_DOMAIN}"
forwards:
  - protocol: http
    ports:
      0: {svc}
  - protocol: https
    ports:
      0: {svc}
  - protocol: h2c
    ports:
      0: {svc_h2c}
""")
        procs.start([os.path.join(release, "opennotr"), "-c", cconf], env=env)
        for ports in (b, a):
            run.wait_http(ports[1])
        secs, conns, t = args.time, args.connections, 2
        plan = []
        for where, ports in (("local (node-b)", b), ("carried (node-a → node-b)", a)):
            gh, g2 = ports[1], ports[3]
            plan += [
                ("http", where, lambda gh=gh: run.wrk(f"http://127.0.0.1:{gh}/", secs, conns, t)),
                ("h2c", where, lambda g2=g2: run.h2load(g2, secs, args.h2_connections, args.h2_streams, tmp)),
                ("download", where, lambda gh=gh: run.download(f"http://127.0.0.1:{gh}/big.bin")),
            ]
        for i in range(args.rounds):
            for kind, where, fn in plan:
                try:
                    r = fn()
                except Exception as e:  # a failed path is reported, not fatal
                    r = {"error": str(e)}
                print({"round": i + 1, "kind": kind, "where": where, **r}, flush=True)
                samples.setdefault((kind, where), []).append(r)
    finally:
        procs.stop()
    rows = []
    for (kind, where), got in samples.items():
        ok = [r for r in got if "error" not in r]
        row = {"kind": kind, "where": where}
        if not ok:
            row["error"] = got[-1].get("error")
        for k in ("rps", "p50", "p99", "mbps"):
            vals = sorted(r[k] for r in ok if k in r)
            if vals:
                row[k] = vals[len(vals) // 2]
        rows.append(row)
    return rows


def report(rows, meta):
    out = [SECTION, "",
           f"Produced by `{meta['cmd']}` on {meta['date']} ({meta['cores']} cores; medians of "
           f"{meta['rounds']} interleaved rounds of {meta['time']} s). Two nodes of one cluster on one machine, "
           "node-b with the client: the same requests to node-b's gateway (served there) and to node-a's "
           "(carried to node-b over a node link). wrk with 64 keep-alive connections; h2load with "
           f"{meta['h2c']} (connections × streams); a 512 MiB download with curl.", "",
           "| kind | local (node-b) | carried (node-a → node-b) | carried / local | p50 local → carried | p99 local → carried |",
           "|---|---|---|---|---|---|"]
    by = {(r["kind"], r["where"]): r for r in rows}
    for kind, unit, key in (("http", "req/s", "rps"), ("h2c", "req/s", "rps"),
                            ("download", "MB/s", "mbps")):
        loc, car = by.get((kind, "local (node-b)"), {}), by.get((kind, "carried (node-a → node-b)"), {})
        if key not in loc or key not in car:
            out.append(f"| {kind} | {loc.get('error', '-')} | {car.get('error', '-')} | | | |")
            continue
        lat = lambda p: (f"{loc[p]:.2f} → {car[p]:.2f} ms" if p in loc and p in car else "")
        out.append(f"| {kind} | {loc[key]:,.0f} {unit} | {car[key]:,.0f} {unit} | {car[key] / loc[key]:.2f}× "
                   f"| {lat('p50')} | {lat('p99')} |")
    out += ["", "The hop adds node-a's read of the first request (or of the h2c connection's first HEADERS "
            "block), the link's encryption and its multiplexer; here both nodes, nginx and the load generator share "
            "two cores, which a cluster's separate hosts do not."]
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--time", type=int, default=8, help="seconds per wrk/h2load run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--h2-connections", type=int, default=16)
    ap.add_argument("--h2-streams", type=int, default=16)
    ap.add_argument("--bin-dir", help="opennotr/opennotrd from here instead of a release build")
    ap.add_argument("--no-report", action="store_true")
    args = ap.parse_args()
    release = args.bin_dir or run.build_opennotr()
    meta = {"cmd": ("python3 bench/cluster_hop.py " + " ".join(sys.argv[1:])).strip(),
            "date": str(datetime.date.today()), "cores": os.cpu_count(), "rounds": args.rounds,
            "time": args.time, "h2c": f"{args.h2_connections} × {args.h2_streams}"}
    with tempfile.TemporaryDirectory() as tmp:
        rows = suite(release, args, tmp)
    text = report(rows, meta)
    print(text)
    if not args.no_report:
        run.update_doc(os.path.join(run.ROOT, "docs", "benchmarks.md"), text)


if __name__ == "__main__":
    main()
