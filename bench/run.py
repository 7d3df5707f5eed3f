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

Usage: python3 bench/run.py [--time 8] [--udp-rate 200M] [--only NAME,...]
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


def iperf(port, args, secs):
    out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(secs), "-J"] + args,
                         capture_output=True, text=True, timeout=secs + 60)
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
    out = subprocess.run(in_ns(["iperf3", "-c", host, "-p", str(port), "-t", str(secs), "-J"] + args),
                         capture_output=True, text=True, timeout=secs + 60)
    data = json.loads(out.stdout)
    if "error" in data:
        raise RuntimeError(data["error"])
    end = data["end"]
    if "-u" in args:
        s = end["sum"]
        return {"mbps": s["bits_per_second"] / 1e6, "loss_pct": s.get("lost_percent", 0.0)}
    return {"mbps": end["sum_received"]["bits_per_second"] / 1e6}


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--time", type=int, default=8)
    ap.add_argument("--udp-rate", default="200M")
    ap.add_argument("--only", default="")
    ap.add_argument("--vip", action="store_true", help="only the virtual LAN path (root)")
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("--report-from", metavar="JSON", help="rewrite docs/benchmarks.md from a saved results file")
    args = ap.parse_args()
    if args.report_from:
        with open(args.report_from) as f:
            saved = json.load(f)
        if isinstance(saved, list):
            saved = {"tunnels": saved, "vip": []}
        cmd = "python3 bench/run.py --time " + str(args.time)
        with open(os.path.join(ROOT, "docs", "benchmarks.md"), "w") as f:
            f.write(write_report(saved["tunnels"], args, cmd) + vip_report(saved["vip"]))
        return
    bins = ensure_tools()
    release = build_opennotr()
    suites = [
        ("direct", setup_direct),
        ("opennotr plain", opennotr_setup(release, True)),
        ("opennotr encrypted", opennotr_setup(release, False)),
        ("rathole plain", rathole_setup(bins, False)),
        ("rathole tls", rathole_setup(bins, True)),
        ("bore", bore_setup(bins)),
    ]
    only = [s for s in args.only.split(",") if s]
    results = []
    vip_results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, setup in suites:
            if args.vip or (only and name not in only):
                continue
            results.append(run_suite(name, setup, args.time, args.udp_rate, tmp))
        if not only:
            vip_results = vip_suite(release, args.time, args.udp_rate, tmp)
    os.makedirs(RESULTS, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(RESULTS, f"{stamp}.json"), "w") as f:
        json.dump({"tunnels": results, "vip": vip_results}, f, indent=1)
    if args.vip:
        print(vip_report(vip_results))
        return
    report = write_report(results, args, "python3 bench/run.py " + " ".join(sys.argv[1:])) + vip_report(vip_results)
    print(report)
    if not args.no_report and not only:
        with open(os.path.join(ROOT, "docs", "benchmarks.md"), "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
