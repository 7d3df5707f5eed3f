#!/usr/bin/env python3
"""Throughput benchmark: direct loopback vs opennotr vs rathole vs bore.

One run measures, on 127.0.0.1 with iperf3, every path below and writes a
table with ratios to docs/benchmarks.md (and raw JSON to bench/results/):

  direct            iperf3 client -> iperf3 server
  opennotr plain    through opennotrd/opennotr, plaintext tunnel
  opennotr enc      through opennotrd/opennotr, encrypted (default)
  rathole plain     rathole, tcp transport
  rathole tls       rathole, tls transport
  bore              bore (TCP only, no encryption)

Tests: TCP 1 stream, TCP 8 streams (-P 8), UDP at a stated rate (-b), and
peak RSS (VmHWM) of each tunnel's server and client.

rathole and bore are installed with `cargo install` into bench/.tools the
first time (rathole takes ~6 minutes on 2 cores). This is a benchmark, not
a test: it is never run by CI.

Gateway (--gateway alone, or part of the full run): HTTP requests/s and
p50/p99 latency with wrk (keep-alive, HTTP/1.1 and HTTPS) and h2load (h2c)
to a local nginx serving a 1 KiB file: directly, through opennotr's embedded
gateway (http/https/h2c plugins), and through nginx in front of rathole.

With --before-bin-dir DIR (gateway only), a second opennotrd/opennotr pair
from DIR (an earlier build) runs beside this build's, its rounds
interleaved with the others, and the report compares the two.

Usage: python3 bench/run.py [--time 8] [--udp-rate 200M] [--only NAME,...]
       python3 bench/run.py --gateway [--gateway-time 10] [--connections 64] [--before-bin-dir DIR]
"""

import argparse
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "bench", ".tools")
RESULTS = os.path.join(ROOT, "bench", "results")


def free_port(kind=socket.SOCK_STREAM):
    # Both TCP and UDP must be free: iperf3 -u uses both on one port.
    while True:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        s.close()
        u.close()
        return port


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def ensure_tools():
    if not shutil.which("iperf3"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "iperf3"], check=True)
    bins = os.path.join(TOOLS, "bin")
    if not os.path.exists(os.path.join(bins, "bore")):
        subprocess.run(["cargo", "install", "--root", TOOLS, "bore-cli", "--locked"], check=True)
    if not os.path.exists(os.path.join(bins, "rathole")):
        # rathole's published lockfile does not build on current rustc, so no --locked.
        subprocess.run(["cargo", "install", "--root", TOOLS, "rathole"], check=True)
    return bins


def build_opennotr():
    subprocess.run(["cargo", "build", "--release", "-p", "opennotr"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target", "release")


def peak_rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class Procs:
    def __init__(self):
        self.procs = []

    def start(self, args, **kw):
        p = subprocess.Popen(args, stdout=kw.pop("stdout", subprocess.DEVNULL),
                             stderr=kw.pop("stderr", subprocess.DEVNULL), **kw)
        self.procs.append(p)
        return p

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []


def iperf(port, args, secs, host="127.0.0.1", ns=False):
    """One iperf3 run (in the benchmark's namespace if `ns`): Mbit/s received, and loss for UDP."""
    cmd = ["iperf3", "-c", host, "-p", str(port), "-t", str(secs), "-J"] + args
    out = subprocess.run(in_ns(cmd) if ns else cmd, capture_output=True, text=True, timeout=secs + 60)
    data = json.loads(out.stdout)
    if "error" in data:
        raise RuntimeError(data["error"])
    end = data["end"]
    if "-u" in args:
        s = end["sum"]
        return {"mbps": s["bits_per_second"] / 1e6, "loss_pct": s.get("lost_percent", 0.0)}
    return {"mbps": end["sum_received"]["bits_per_second"] / 1e6}


def warm_up(port, attempts=40):
    """Waits until a short iperf3 run gets through the tunnel. A bare TCP
    probe would be forwarded to iperf3 and confuse its one-client server."""
    last = None
    for _ in range(attempts):
        try:
            iperf(port, [], 1)
            return
        except Exception as e:  # not up yet
            last = e
            time.sleep(0.25)
    raise RuntimeError(f"tunnel never carried iperf3: {last}")


def run_suite(name, setup, secs, udp_rate, tmp):
    """setup(procs, iperf_port, tmp) -> (public_port, server_pid, client_pid, has_udp)"""
    procs = Procs()
    iperf_port = free_port()
    srv = procs.start(["iperf3", "-s", "-p", str(iperf_port), "-B", "127.0.0.1"])
    wait_port(iperf_port)
    result = {"name": name}
    try:
        public, spid, cpid, has_udp = setup(procs, iperf_port, tmp)
        warm_up(public)
        result["tcp1"] = iperf(public, [], secs)
        result["tcp8"] = iperf(public, ["-P", "8"], secs)
        if has_udp:
            result["udp"] = iperf(public, ["-u", "-b", udp_rate, "-l", "1400"], secs)
        if spid:
            result["rss_server_kb"] = peak_rss_kb(spid)
        if cpid:
            result["rss_client_kb"] = peak_rss_kb(cpid)
    except Exception as e:  # a failed peer is reported, not fatal
        result["error"] = str(e)
    finally:
        procs.stop()
        srv.wait()
    print(json.dumps(result), flush=True)
    return result


def setup_direct(procs, port, tmp):
    return port, None, None, True


def opennotr_setup(release, plaintext):
    def setup(procs, port, tmp):
        ctrl = free_port()
        public = free_port()
        key = "bench-key"
        sconf = os.path.join(tmp, "notrd.yaml")
        with open(sconf, "w") as f:
            f.write(f"""server:
  listen: "127.0.0.1:{ctrl}"
  authKey: "{key}"
  domain: "bench.notr.test"
  allowPlaintext: {str(plaintext).lower()}
dhcp:
  cidr: "100.64.242.1/24"
plugin:
  tcp: '{{"bind": "127.0.0.1"}}'
  udp: '{{"bind": "127.0.0.1"}}'
""")
        cconf = os.path.join(tmp, "client.yaml")
        with open(cconf, "w") as f:
            f.write(f"""serverAddr: "127.0.0.1:{ctrl}"
key: "{key}"
plaintext: {str(plaintext).lower()}
forwards:
  - protocol: tcp
    ports:
      {public}: {port}
  - protocol: udp
    ports:
      {public}: {port}
""")
        env = dict(os.environ, RUST_LOG="warn")
        s = procs.start([os.path.join(release, "opennotrd"), "-c", sconf], env=env)
        wait_port(ctrl)
        c = procs.start([os.path.join(release, "opennotr"), "-c", cconf], env=env)
        return public, s.pid, c.pid, True
    return setup


def rathole_setup(bins, tls):
    def setup(procs, port, tmp):
        ctrl = free_port()
        public = free_port()
        transport_s = transport_c = ""
        if tls:
            key = os.path.join(tmp, "key.pem")
            crt = os.path.join(tmp, "crt.pem")
            pfx = os.path.join(tmp, "id.pfx")
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                            "-out", crt, "-days", "2", "-subj", "/CN=localhost",
                            "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
            subprocess.run(["openssl", "pkcs12", "-export", "-out", pfx, "-inkey", key, "-in", crt,
                            "-passout", "pass:1234"], check=True, capture_output=True)
            transport_s = f'[server.transport]\ntype = "tls"\n[server.transport.tls]\npkcs12 = "{pfx}"\npkcs12_password = "1234"\n'
            transport_c = f'[client.transport]\ntype = "tls"\n[client.transport.tls]\ntrusted_root = "{crt}"\nhostname = "localhost"\n'
        sconf = os.path.join(tmp, "rathole-server.toml")
        with open(sconf, "w") as f:
            f.write(f'[server]\nbind_addr = "127.0.0.1:{ctrl}"\n{transport_s}'
                    f'[server.services.t]\ntoken = "k"\nbind_addr = "127.0.0.1:{public}"\n'
                    f'[server.services.u]\ntype = "udp"\ntoken = "k"\nbind_addr = "127.0.0.1:{public}"\n')
        cconf = os.path.join(tmp, "rathole-client.toml")
        host = "localhost" if tls else "127.0.0.1"
        with open(cconf, "w") as f:
            f.write(f'[client]\nremote_addr = "{host}:{ctrl}"\n{transport_c}'
                    f'[client.services.t]\ntoken = "k"\nlocal_addr = "127.0.0.1:{port}"\n'
                    f'[client.services.u]\ntype = "udp"\ntoken = "k"\nlocal_addr = "127.0.0.1:{port}"\n')
        env = dict(os.environ, RUST_LOG="warn")
        s = procs.start([os.path.join(bins, "rathole"), "--server", sconf], env=env)
        wait_port(ctrl)
        c = procs.start([os.path.join(bins, "rathole"), "--client", cconf], env=env)
        return public, s.pid, c.pid, True
    return setup


def bore_setup(bins):
    def setup(procs, port, tmp):
        public = free_port()
        s = procs.start([os.path.join(bins, "bore"), "server", "--bind-addr", "127.0.0.1",
                         "--min-port", str(public), "--max-port", str(public)])
        wait_port(7835)
        c = procs.start([os.path.join(bins, "bore"), "local", str(port), "--to", "127.0.0.1",
                         "--port", str(public)])
        return public, s.pid, c.pid, False
    return setup


NS = "onbench"


def in_ns(args):
    return ["ip", "netns", "exec", NS] + args


def iperf_ns(host, port, args, secs):
    return iperf(port, args, secs, host=host, ns=True)


def vip_suite(release, secs, udp_rate, tmp):
    """The virtual LAN path, in a network namespace of our own (the rules
    must not touch the host's): iperf3 to VIP:port vs the tcp/udp plugins'
    public port vs direct. Needs root and nft."""
    if os.geteuid() != 0 or not shutil.which("nft"):
        print("virtual LAN benchmark skipped: needs root and nft", flush=True)
        return []
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    subprocess.run(in_ns(["ip", "link", "set", "lo", "up"]), check=True)
    procs = Procs()
    results = []
    try:
        sconf = os.path.join(tmp, "vlan-notrd.yaml")
        with open(sconf, "w") as f:
            f.write("""server:
  listen: "127.0.0.1:10100"
  authKey: "bench-key"
  domain: "bench.notr.test"
  tcplisten: "127.0.0.1:4398"
  udplisten: "127.0.0.1:4399"
dhcp:
  cidr: "100.64.242.1/24"
plugin:
  tcp: '{"bind": "127.0.0.1"}'
  udp: '{"bind": "127.0.0.1"}'
""")
        cconf = os.path.join(tmp, "vlan-client.yaml")
        with open(cconf, "w") as f:
            f.write("""serverAddr: "127.0.0.1:10100"
key: "bench-key"
forwards:
  - protocol: tcp
    ports:
      15201: 5201
  - protocol: udp
    ports:
      15201: 5201
""")
        env = dict(os.environ, RUST_LOG="warn")
        procs.start(in_ns(["iperf3", "-s", "-p", "5201", "-B", "127.0.0.1"]))
        procs.start(in_ns([os.path.join(release, "opennotrd"), "-c", sconf]), env=env)
        time.sleep(0.5)  # a benchmark, not a test: the warm-up below is the real readiness check
        client = procs.start(in_ns([os.path.join(release, "opennotr"), "-c", cconf]), env=env,
                             stdout=subprocess.PIPE, text=True)
        vip = None
        for line in client.stdout:
            if line.startswith("vhost: "):
                vip = line.split()[1]
                break
        paths = [("direct (in the namespace)", "127.0.0.1", 5201), ("tcp/udp plugin public port", "127.0.0.1", 15201),
                 (f"virtual LAN, VIP {vip}", vip, 5201)]
        for name, host, port in paths:
            r = {"name": name}
            for _ in range(40):
                try:
                    iperf_ns(host, port, [], 1)
                    break
                except Exception:
                    time.sleep(0.25)
            try:
                r["tcp1"] = iperf_ns(host, port, [], secs)
                r["tcp8"] = iperf_ns(host, port, ["-P", "8"], secs)
                r["udp"] = iperf_ns(host, port, ["-u", "-b", udp_rate, "-l", "1400"], secs)
            except Exception as e:
                r["error"] = str(e)
            print(json.dumps(r), flush=True)
            results.append(r)
    finally:
        procs.stop()
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    return results


def vip_report(results):
    if not results:
        return ""
    base = results[0]
    lines = ["", "## Virtual LAN path", "",
             "In a network namespace of the run's own (lo only), iperf3 from the server host to the client's",
             "iperf3 server: directly, through the tcp/udp plugins' public port, and at the client's VIP",
             "through the transparent proxy. Ratios against direct.", "",
             "| path | TCP 1 stream | TCP 8 streams | UDP |", "|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | error: {r['error']} | | |")
            continue
        b = base if r is not base else None
        lines.append(f"| {r['name']} | {fmt(r, 'tcp1', b)} | {fmt(r, 'tcp8', b)} | {fmt(r, 'udp', None)} |")
    return "\n".join(lines) + "\n"


def fmt(r, key, base):
    v = r.get(key)
    if not v:
        return "n/a"
    s = f"{v['mbps']:.0f}"
    if "loss_pct" in v:
        s += f" ({v['loss_pct']:.2f}% loss)"
    if base and base.get(key) and key != "udp":
        s += f" · {v['mbps'] / base[key]['mbps']:.2f}×"
    return s


def write_report(results, args, cmd):
    by = {r["name"]: r for r in results}
    lines = [
        "# Benchmarks",
        "",
        f"Produced by `{cmd}` on {datetime.date.today()} ({os.cpu_count()} cores, loopback, "
        f"{args.time} s per iperf3 run, UDP offered at `-b {args.udp_rate} -l 1400`).",
        "All processes (iperf3 client and server, tunnel server and client) share the same cores.",
        "",
        "Throughput in Mbit/s. Ratios in the opennotr rows are against the matching rathole row",
        "(plain vs rathole plain, encrypted vs rathole TLS); in the other rows against direct.",
        "",
        "| path | TCP 1 stream | TCP 8 streams | UDP | peak RSS server / client |",
        "|---|---|---|---|---|",
    ]
    pairs = {"opennotr plain": "rathole plain", "opennotr encrypted": "rathole tls"}
    for r in results:
        if "error" in r:
            lines.append(f"| {r['name']} | error: {r['error']} | | | |")
            continue
        base = by.get(pairs.get(r["name"], "direct")) if r["name"] != "direct" else None
        rss = "—"
        if r.get("rss_server_kb"):
            rss = f"{r['rss_server_kb'] / 1024:.1f} MB / {r['rss_client_kb'] / 1024:.1f} MB"
        lines.append(f"| {r['name']} | {fmt(r, 'tcp1', base)} | {fmt(r, 'tcp8', base)} | {fmt(r, 'udp', None)} | {rss} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------- gateway

GW_DOMAIN = "bench.notr.test"
BODY_SIZE = 1024


def nginx_start(procs, tmp, name, body):
    """Starts nginx with its own prefix in tmp; body is the `http {}` content."""
    prefix = os.path.join(tmp, name)
    os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        # `user root`: the run's temporary directory is private to root.
        f.write(f"""user root;
worker_processes {body[0]};
error_log {prefix}/logs/error.log warn;
pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {prefix}/body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
{body[1]}
}}
""")
    return procs.start(["nginx", "-p", prefix, "-c", conf, "-g", "daemon off;"])


def make_cert(tmp):
    key = os.path.join(tmp, "gw-key.pem")
    crt = os.path.join(tmp, "gw-crt.pem")
    if not os.path.exists(crt):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", f"/CN={GW_DOMAIN}",
                        "-addext", f"subjectAltName=DNS:{GW_DOMAIN},DNS:*.notr.test,DNS:localhost"],
                       check=True, capture_output=True)
    return crt, key


def wait_http(port, tls=False, attempts=80):
    """Waits until GET / with Host: bench.notr.test answers 200 on port."""
    import http.client
    import ssl
    last = None
    for _ in range(attempts):
        try:
            if tls:
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                c = http.client.HTTPSConnection("127.0.0.1", port, timeout=2, context=ctx)
            else:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/", headers={"Host": GW_DOMAIN})
            r = c.getresponse()
            body = r.read()
            c.close()
            if r.status == 200 and len(body) == BODY_SIZE:
                return
            last = f"status {r.status}, {len(body)} bytes"
        except Exception as e:
            last = e
        time.sleep(0.25)
    raise RuntimeError(f"no 200 on port {port}: {last}")


def to_ms(s):
    for unit, mult in (("us", 1e-3), ("ms", 1.0), ("s", 1e3), ("m", 6e4)):
        if s.endswith(unit):
            return float(s[: -len(unit)]) * mult
    return float(s)


def wrk(url, secs, conns, threads):
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{secs}s", "--latency",
                          "-H", f"Host: {GW_DOMAIN}", url],
                         capture_output=True, text=True, timeout=secs + 60).stdout
    r = {}
    lat = False
    for line in out.splitlines():
        t = line.split()
        if line.startswith("Requests/sec:"):
            r["rps"] = float(t[1])
        elif line.strip().startswith("Latency Distribution"):
            lat = True
        elif lat and t and t[0] in ("50%", "99%"):
            r["p" + t[0][:-1]] = to_ms(t[1])
        elif "Non-2xx" in line:
            r["non2xx"] = int(t[-1])
        elif "Socket errors" in line:
            r["socket_errors"] = line.strip()
        elif "requests in" in line:
            r["requests"] = int(t[0])
    if "rps" not in r:
        raise RuntimeError(f"wrk gave no result: {out[-400:]}")
    return r


DOWNLOAD_SIZE = 512 << 20


def download(url):
    """One large response through a path: curl's average speed, MB/s."""
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{speed_download} %{size_download}",
                          "-H", f"Host: {GW_DOMAIN}", url], capture_output=True, text=True, timeout=300)
    speed, size = out.stdout.split()
    if int(float(size)) != DOWNLOAD_SIZE:
        raise RuntimeError(f"downloaded {size} bytes of {DOWNLOAD_SIZE}: {out.stderr.strip()}")
    return {"mbps": float(speed) / 1e6}


def h2load(port, secs, conns, streams, tmp):
    log = os.path.join(tmp, f"h2load-{port}.log")
    out = subprocess.run(["h2load", "-t", "2", "-c", str(conns), "-m", str(streams), "-D", str(secs),
                          "--warm-up-time", "1", "--log-file", log,
                          "-H", f":authority: {GW_DOMAIN}", f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, timeout=secs + 60).stdout
    r = {}
    for line in out.splitlines():
        t = line.replace(",", "").split()
        if line.startswith("finished in"):
            r["rps"] = float(t[3])
        elif line.startswith("requests:"):
            r["requests"] = int(t[1])
            r["failed"] = int(t[t.index("failed") - 1])
        elif line.startswith("status codes:"):
            r["non2xx"] = int(t[t.index("3xx") - 1]) + int(t[t.index("4xx") - 1]) + int(t[t.index("5xx") - 1])
    if "rps" not in r:
        raise RuntimeError(f"h2load gave no result: {out[-400:]}")
    lats = []
    with open(log) as f:
        for line in f:
            p = line.split()
            if len(p) >= 3:
                lats.append(int(p[2]) / 1000.0)  # microseconds
    lats.sort()
    if lats:
        r["p50"] = lats[len(lats) // 2]
        r["p99"] = lats[min(len(lats) - 1, int(len(lats) * 0.99))]
    return r


def gateway_suite(release, bins, args, tmp):
    """HTTP requests/s and latency: direct, through the embedded gateway,
    and through nginx in front of rathole (tcp and tls transports)."""
    for tool, pkg in (("wrk", "wrk"), ("h2load", "nghttp2-client"), ("nginx", "nginx-light")):
        if not shutil.which(tool):
            subprocess.run(["apt-get", "install", "-y", "-qq", pkg], check=True)
    secs, conns = args.gateway_time, args.connections
    crt, key = make_cert(tmp)
    www = os.path.join(tmp, "www")
    os.makedirs(www, exist_ok=True)
    with open(os.path.join(www, "index.html"), "wb") as f:
        f.write(b"x" * (BODY_SIZE - 1) + b"\n")
    with open(os.path.join(www, "big.bin"), "wb") as f:
        f.truncate(DOWNLOAD_SIZE)
    procs = Procs()
    results = []

    # Every path is measured `rounds` times, the paths interleaved (a
    # burst of background load then hits all of them alike), and each
    # figure of a row is the median of its rounds.
    plan = []

    kinds = [k for k in args.gateway_kinds.split(",") if k]

    def run(name, kind, fn):
        if not kinds or kind in kinds:
            plan.append((name, kind, fn))

    def execute():
        samples = {}
        for i in range(args.gateway_rounds):
            for name, kind, fn in plan:
                try:
                    r = fn()
                except Exception as e:  # a failed path is reported, not fatal
                    r = {"error": str(e)}
                print(json.dumps({"round": i + 1, "name": name, "kind": kind, **r}), flush=True)
                samples.setdefault((name, kind), []).append(r)
        for name, kind, _ in plan:
            got = samples[(name, kind)]
            ok = [r for r in got if "error" not in r]
            row = {"name": name, "kind": kind}
            if not ok:
                row["error"] = got[-1].get("error", "no result")
            else:
                for k in ("rps", "p50", "p99", "mbps"):
                    vals = sorted(r[k] for r in ok if k in r)
                    if vals:
                        row[k] = vals[len(vals) // 2]
                row["rounds"] = [r.get("rps", r.get("mbps")) for r in ok]
            results.append(row)

    try:
        # The local service: nginx, one worker, a 1 KiB static file, HTTP/1.1
        # (plain and TLS) and cleartext HTTP/2 with prior knowledge.
        svc, svc_tls, svc_h2c = free_port(), free_port(), free_port()
        nginx_start(procs, tmp, "service", ("1", f"""
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{svc};
    listen 127.0.0.1:{svc_tls} ssl;
    listen 127.0.0.1:{svc_h2c} http2;
    ssl_certificate {crt};
    ssl_certificate_key {key};
    http2_max_requests 1000000;
    root {www};
  }}"""))
        for p in (svc, svc_tls, svc_h2c):
            wait_port(p)
        wait_http(svc)

        # opennotr: the http, https and h2c plugins of one server, one client
        # with one forward of each to the service; one pair with the default
        # encrypted tunnel and one with a plaintext tunnel.
        env = dict(os.environ, RUST_LOG="warn")
        if args.workers:
            # opennotr and rathole are tokio programs: this sets their
            # worker threads; the front nginx gets as many processes.
            env["TOKIO_WORKER_THREADS"] = str(args.workers)
        gws = {}
        pairs = [("enc", False, release), ("plain", True, release)]
        if args.before_bin_dir:
            pairs.append(("before", False, args.before_bin_dir))
        for tag, plain, bin_dir in pairs:
            ctrl, gh, gs, g2 = free_port(), free_port(), free_port(), free_port()
            sconf = os.path.join(tmp, f"gw-notrd-{tag}.yaml")
            with open(sconf, "w") as f:
                f.write(f"""server:
  listen: "127.0.0.1:{ctrl}"
  authKey: "bench-key"
  domain: "notr.test"
  allowPlaintext: {str(plain).lower()}
dhcp:
  cidr: "100.64.{243 + len(gws)}.1/24"
plugin:
  http: '{{"listen": "127.0.0.1:{gh}"}}'
  https: '{{"listen": "127.0.0.1:{gs}", "cert": "{crt}", "key": "{key}"}}'
  h2c: '{{"listen": "127.0.0.1:{g2}"}}'
""")
            cconf = os.path.join(tmp, f"gw-client-{tag}.yaml")
            with open(cconf, "w") as f:
                f.write(f"""serverAddr: "127.0.0.1:{ctrl}"
key: "bench-key"
plaintext: {str(plain).lower()}
domain: "{GW_DOMAIN}"
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
            procs.start([os.path.join(bin_dir, "opennotrd"), "-c", sconf], env=env)
            wait_port(ctrl)
            procs.start([os.path.join(bin_dir, "opennotr"), "-c", cconf], env=env)
            gws[tag] = (gh, gs, g2)

        # rathole, tcp and tls transports, each forwarding a port to the
        # service; nginx in front of each, as a reverse proxy with upstream
        # keep-alive, terminating TLS with the same certificate.
        fronts = {}
        pfx = os.path.join(tmp, "gw-id.pfx")
        subprocess.run(["openssl", "pkcs12", "-export", "-out", pfx, "-inkey", key, "-in", crt,
                        "-passout", "pass:1234"], check=True, capture_output=True)
        for transport in ("tcp", "tls"):
            rctrl, rpub = free_port(), free_port()
            ts = tc = ""
            if transport == "tls":
                ts = f'[server.transport]\ntype = "tls"\n[server.transport.tls]\npkcs12 = "{pfx}"\npkcs12_password = "1234"\n'
                tc = f'[client.transport]\ntype = "tls"\n[client.transport.tls]\ntrusted_root = "{crt}"\nhostname = "localhost"\n'
            rs = os.path.join(tmp, f"gw-rathole-{transport}-server.toml")
            with open(rs, "w") as f:
                f.write(f'[server]\nbind_addr = "127.0.0.1:{rctrl}"\n{ts}'
                        f'[server.services.web]\ntoken = "k"\nbind_addr = "127.0.0.1:{rpub}"\n')
            rc = os.path.join(tmp, f"gw-rathole-{transport}-client.toml")
            host = "localhost" if transport == "tls" else "127.0.0.1"
            with open(rc, "w") as f:
                f.write(f'[client]\nremote_addr = "{host}:{rctrl}"\n{tc}'
                        f'[client.services.web]\ntoken = "k"\nlocal_addr = "127.0.0.1:{svc}"\n')
            procs.start([os.path.join(bins, "rathole"), "--server", rs], env=env)
            wait_port(rctrl)
            procs.start([os.path.join(bins, "rathole"), "--client", rc], env=env)
            fh, fs = free_port(), free_port()
            nginx_start(procs, tmp, f"front-{transport}", (str(args.workers or "auto"), f"""
  keepalive_requests 1000000;
  upstream rathole {{ server 127.0.0.1:{rpub}; keepalive 64; keepalive_requests 1000000; }}
  server {{
    listen 127.0.0.1:{fh};
    listen 127.0.0.1:{fs} ssl;
    ssl_certificate {crt};
    ssl_certificate_key {key};
    location / {{
      proxy_pass http://rathole;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
    }}
  }}"""))
            fronts[transport] = (fh, fs)
        for gh, gs, g2 in gws.values():
            for p in (gh, gs, g2):
                wait_port(p)
            wait_http(gh)
            wait_http(gs, tls=True)
        for fh, fs in fronts.values():
            wait_http(fh)
            wait_http(fs, tls=True)

        t = args.wrk_threads
        before = "before" in gws
        run("direct", "http", lambda: wrk(f"http://127.0.0.1:{svc}/", secs, conns, t))
        run("opennotr gateway", "http", lambda: wrk(f"http://127.0.0.1:{gws['enc'][0]}/", secs, conns, t))
        if before:
            run(BEFORE, "http", lambda: wrk(f"http://127.0.0.1:{gws['before'][0]}/", secs, conns, t))
        run("opennotr gateway, plaintext tunnel", "http",
            lambda: wrk(f"http://127.0.0.1:{gws['plain'][0]}/", secs, conns, t))
        run("nginx + rathole tcp", "http", lambda: wrk(f"http://127.0.0.1:{fronts['tcp'][0]}/", secs, conns, t))
        run("nginx + rathole tls", "http", lambda: wrk(f"http://127.0.0.1:{fronts['tls'][0]}/", secs, conns, t))
        run("direct (nginx TLS)", "https", lambda: wrk(f"https://127.0.0.1:{svc_tls}/", secs, conns, t))
        run("opennotr gateway", "https", lambda: wrk(f"https://127.0.0.1:{gws['enc'][1]}/", secs, conns, t))
        if before:
            run(BEFORE, "https", lambda: wrk(f"https://127.0.0.1:{gws['before'][1]}/", secs, conns, t))
        run("opennotr gateway, plaintext tunnel", "https",
            lambda: wrk(f"https://127.0.0.1:{gws['plain'][1]}/", secs, conns, t))
        run("nginx TLS + rathole tcp", "https",
            lambda: wrk(f"https://127.0.0.1:{fronts['tcp'][1]}/", secs, conns, t))
        run("nginx TLS + rathole tls", "https",
            lambda: wrk(f"https://127.0.0.1:{fronts['tls'][1]}/", secs, conns, t))
        big = "big.bin"
        run("direct", "download", lambda: download(f"http://127.0.0.1:{svc}/{big}"))
        run("opennotr gateway", "download", lambda: download(f"http://127.0.0.1:{gws['enc'][0]}/{big}"))
        if before:
            run(BEFORE, "download", lambda: download(f"http://127.0.0.1:{gws['before'][0]}/{big}"))
        run("opennotr gateway, plaintext tunnel", "download",
            lambda: download(f"http://127.0.0.1:{gws['plain'][0]}/{big}"))
        run("nginx + rathole tcp", "download", lambda: download(f"http://127.0.0.1:{fronts['tcp'][0]}/{big}"))
        run("nginx + rathole tls", "download", lambda: download(f"http://127.0.0.1:{fronts['tls'][0]}/{big}"))
        c2, m2 = args.h2_connections, args.h2_streams
        run("direct", "h2c", lambda: h2load(svc_h2c, secs, c2, m2, tmp))
        run("opennotr gateway", "h2c", lambda: h2load(gws["enc"][2], secs, c2, m2, tmp))
        if before:
            run(BEFORE, "h2c", lambda: h2load(gws["before"][2], secs, c2, m2, tmp))
        run("opennotr gateway, plaintext tunnel", "h2c", lambda: h2load(gws["plain"][2], secs, c2, m2, tmp))
        execute()
    finally:
        procs.stop()
    return results


# The row of the earlier build (--before-bin-dir).
BEFORE = "opennotr gateway, build before"


def before_after(results, meta):
    """Lines comparing this build's gateway rows with the earlier build's."""
    rows = {(r["name"], r["kind"]): r for r in results if "error" not in r}
    out = []
    for kind, key, unit in (("http", "rps", "requests/s"), ("https", "rps", "requests/s"),
                            ("h2c", "rps", "requests/s"), ("download", "mbps", "MB/s")):
        now, was = rows.get(("opennotr gateway", kind)), rows.get((BEFORE, kind))
        if now and was and was.get(key):
            out.append(f"| {kind} | {was[key]:.0f} | {now[key]:.0f} | {unit} | {now[key] / was[key]:.3f}× |")
    if not out:
        return []
    return ["", f"This build against the build before ({meta.get('before', 'see the command')}), both with the "
            "default encrypted tunnel, in the same run, rounds interleaved (medians):", "",
            "| kind | before | this build | unit | this / before |", "|---|---|---|---|---|"] + out


def gateway_report(results, meta):
    if not results:
        return ""
    workers = meta.get("workers", 0)
    front = f"`worker_processes {workers}`" if workers else "`worker_processes auto`"
    lines = ["", gateway_heading(workers), "",
             f"Produced by `{meta.get('cmd', 'python3 bench/run.py --gateway')}` on {meta.get('date', '?')}"
             f" ({meta.get('cores', '?')} cores, loopback, load average {meta.get('load', '?')} before the run).",
             f"HTTP/1.1 and HTTPS: `wrk -t{meta.get('wrk_threads', 2)} -c{meta.get('connections', 64)} "
             f"-d{meta.get('secs', 10)}s --latency -H 'Host: {GW_DOMAIN}'` (keep-alive). "
             f"h2c: `h2load -t2 -c{meta.get('h2_connections', 16)} -m{meta.get('h2_streams', 16)} "
             f"-D{meta.get('secs', 10)} --warm-up-time 1` (prior knowledge), latency percentiles from its "
             "`--log-file`.",
             "The service is nginx (one worker) serving a 1 KiB static file; the nginx in front of rathole",
             f"runs {front} with upstream keep-alive"
             + (f"; opennotrd, opennotr and rathole run {workers} tokio worker thread(s)"
                f" (`TOKIO_WORKER_THREADS={workers}`)" if workers else "")
             + ". Ratios are requests/s against the",
             "`rathole tcp` and the `rathole tls` row of the same kind (h2c: against direct).",
             f"Each path ran {meta.get('rounds', 1)} times, the paths interleaved; every figure is the median "
             "of its rounds (the requests/s of each round are in the run's JSON under bench/results/).", "",
             "| kind | path | requests/s | p50 | p99 | vs rathole tcp | vs rathole tls |",
             "|---|---|---|---|---|---|---|"]
    tcp, tls = {}, {}
    for r in results:
        if "error" in r:
            continue
        if "rathole tcp" in r["name"] or (r["kind"] == "h2c" and r["name"] == "direct"):
            tcp[r["kind"]] = r
        if "rathole tls" in r["name"]:
            tls[r["kind"]] = r

    def ratio(r, b):
        return f"{r['rps'] / b['rps']:.2f}×" if b and b is not r else "—"

    downloads = [r for r in results if r["kind"] == "download"]
    results = [r for r in results if r["kind"] != "download"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['kind']} | {r['name']} | error: {r['error']} | | | | |")
            continue
        bad = ""
        if r.get("non2xx") or r.get("failed"):
            bad = f" ({r.get('non2xx', 0)} non-2xx, {r.get('failed', 0)} failed)"
        lines.append(f"| {r['kind']} | {r['name']} | {r['rps']:.0f}{bad} | {r.get('p50', 0):.2f} ms | "
                     f"{r.get('p99', 0):.2f} ms | {ratio(r, tcp.get(r['kind']))} | {ratio(r, tls.get(r['kind']))} |")
    if downloads:
        lines += ["", f"One {DOWNLOAD_SIZE >> 20} MiB response (nginx serving a file) through each path, "
                  "`curl -o /dev/null`, average speed; medians of the rounds.", "",
                  "| path | MB/s | vs rathole tcp | vs rathole tls |", "|---|---|---|---|"]
        base = {k: next((r for r in downloads if k in r["name"] and "error" not in r), None)
                for k in ("rathole tcp", "rathole tls")}

        def dl_ratio(r, b):
            return f"{r['mbps'] / b['mbps']:.2f}×" if b and b is not r else "—"

        for r in downloads:
            if "error" in r:
                lines.append(f"| {r['name']} | error: {r['error']} | | |")
                continue
            lines.append(f"| {r['name']} | {r['mbps']:.0f} | {dl_ratio(r, base['rathole tcp'])} | "
                         f"{dl_ratio(r, base['rathole tls'])} |")
    lines += before_after(downloads + results, meta)
    return "\n".join(lines) + "\n"


def gateway_heading(workers):
    if not workers:
        return "## Gateway"
    return "## Gateway, one worker each" if workers == 1 else f"## Gateway, {workers} workers each"


def replace_section(text, section):
    """Puts a generated section in place of the document's section with the
    same heading (its first non-empty line), up to the next `## ` heading,
    or at the end if there is none. The sections written by hand (notes,
    how to reproduce) stay as they are."""
    if not section.strip():
        return text
    heading = section.strip().split("\n", 1)[0].strip()
    lines = text.split("\n")
    start = next((i for i, l in enumerate(lines) if l.strip() == heading), None)
    if start is None:
        return text.rstrip("\n") + "\n" + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    head = "\n".join(lines[:start]).rstrip("\n")
    tail = "\n".join(lines[end:])
    return (head + "\n" if head else "") + section.lstrip("\n" if not head else "") + ("\n" + tail if tail.strip() else "")


def update_doc(doc, *sections):
    """Rewrites the generated sections of docs/benchmarks.md in place."""
    text = open(doc).read() if os.path.exists(doc) else ""
    for section in sections:
        text = replace_section(text, section)
    with open(doc, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--time", type=int, default=8)
    ap.add_argument("--udp-rate", default="200M")
    ap.add_argument("--only", default="")
    ap.add_argument("--vip", action="store_true", help="only the virtual LAN path (root)")
    ap.add_argument("--gateway", action="store_true",
                    help="only the HTTP gateway benchmark; replaces the Gateway section of docs/benchmarks.md")
    ap.add_argument("--gateway-time", type=int, default=10, help="seconds per wrk/h2load run")
    ap.add_argument("--gateway-rounds", type=int, default=3,
                    help="interleaved rounds per gateway path; the report gives medians")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections")
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--gateway-kinds", default="",
                    help="gateway benchmark: only these kinds (http,https,download,h2c); default all")
    ap.add_argument("--before-bin-dir",
                    help="gateway benchmark: also run opennotr/opennotrd from here (an earlier build) and compare")
    ap.add_argument("--h2-connections", type=int, default=16)
    ap.add_argument("--h2-streams", type=int, default=16, help="h2load -m")
    ap.add_argument("--workers", type=int, default=0,
                    help="gateway benchmark: worker threads of opennotr and rathole and processes of the front "
                         "nginx (default: each program's own, one per core); its own section of the report")
    ap.add_argument("--bin-dir", help="opennotr/opennotrd from here instead of a release build")
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--report-from", metavar="JSON", help="rewrite docs/benchmarks.md from a saved results file")
    args = ap.parse_args()
    doc = os.path.join(ROOT, "docs", "benchmarks.md")
    if args.report_from:
        with open(args.report_from) as f:
            saved = json.load(f)
        if isinstance(saved, list):
            saved = {"tunnels": saved, "vip": []}
        gw = gateway_report(saved.get("gateway", []), saved.get("gateway_meta", {}))
        tunnels = write_report(saved["tunnels"], args, "python3 bench/run.py --time " + str(args.time)) \
            if saved.get("tunnels") else ""
        update_doc(doc, tunnels, vip_report(saved.get("vip", [])), gw)
        return
    bins = ensure_tools()
    release = args.bin_dir or build_opennotr()
    suites = [
        ("direct", setup_direct),
        ("opennotr plain", opennotr_setup(release, True)),
        ("opennotr encrypted", opennotr_setup(release, False)),
        ("rathole plain", rathole_setup(bins, False)),
        ("rathole tls", rathole_setup(bins, True)),
        ("bore", bore_setup(bins)),
    ]
    only = [s for s in args.only.split(",") if s]
    cmd = "python3 bench/run.py " + " ".join(sys.argv[1:])
    results = []
    vip_results = []
    gw_results = []
    gw_meta = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, setup in suites:
            if args.vip or args.gateway or (only and name not in only):
                continue
            results.append(run_suite(name, setup, args.time, args.udp_rate, tmp))
        if not only and not args.gateway:
            vip_results = vip_suite(release, args.time, args.udp_rate, tmp)
        if (not only and not args.vip) or args.gateway:
            gw_meta = {"cmd": cmd.strip(), "date": str(datetime.date.today()), "cores": os.cpu_count(),
                       "load": "%.2f" % os.getloadavg()[0], "secs": args.gateway_time,
                       "connections": args.connections, "wrk_threads": args.wrk_threads,
                       "h2_connections": args.h2_connections, "h2_streams": args.h2_streams,
                       "rounds": args.gateway_rounds, "workers": args.workers}
            if args.before_bin_dir:
                commit = os.path.join(args.before_bin_dir, "COMMIT")
                gw_meta["before"] = open(commit).read().strip() if os.path.exists(commit) else args.before_bin_dir
            gw_results = gateway_suite(release, bins, args, tmp)
    os.makedirs(RESULTS, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(RESULTS, f"{stamp}.json"), "w") as f:
        json.dump({"tunnels": results, "vip": vip_results, "gateway": gw_results, "gateway_meta": gw_meta}, f,
                  indent=1)
    # Each part of the run replaces its own section; a partial run (--only)
    # only prints its table.
    tunnels = write_report(results, args, cmd) if results and not only else ""
    vip = vip_report(vip_results)
    gw = gateway_report(gw_results, gw_meta)
    print((write_report(results, args, cmd) if results else "") + vip + gw)
    if not args.no_report:
        update_doc(doc, tunnels, vip, gw)


if __name__ == "__main__":
    main()
