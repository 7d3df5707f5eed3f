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

Network suites (root; each only on its own flag, never part of the default
run): three network namespaces of the run's own (pid-suffixed names, removed
on exit), addresses from 198.18.0.0/15:

  visitor                   server                              client
  198.18.1.1 ---veth--- 198.18.1.2 | 198.18.2.1 ---link--- 198.18.2.2
  iperf3 -c, probes     opennotrd / rathole server          opennotr / rathole client,
                        (routes between its two links)      iperf3 -s, TTFB service, UDP echo

  --netns  the link is a veth (1500 MTU): iperf3 TCP 1 and 8 streams, UDP at
           --udp-rate, peak RSS, on direct (routed), opennotr plain,
           encrypted and over QUIC, rathole plain and tls.
  --wan    the link is notr-wan (bench/wan, a user-space delay line: TUN
           devices in server and client, --wan-delay ms each way, each loss of
           --wan-loss): first the emulator's capacity (direct iperf3 at 0 ms),
           then per loss: time to first byte of fresh connections, iperf3 TCP
           1 stream, iperf3 UDP loss at --wan-udp-rate, UDP echo round trips;
           on direct, opennotr, opennotr with spareChannels: 0 (skipped when
           the client does not know the key), opennotr over QUIC, rathole tls
           and plain.
The paths are data (net_paths): a new transport is one more line there.

Usage: python3 bench/run.py [--time 8] [--udp-rate 200M] [--only NAME,...]
       python3 bench/run.py --gateway [--gateway-time 10] [--connections 64] [--before-bin-dir DIR]
       python3 bench/run.py --netns [--time 8] [--udp-rate 200M]
       python3 bench/run.py --wan [--wan-delay 25] [--wan-loss 0,0.1,1] [--wan-time 10] [--ttfb-samples 40]
       (--only "direct,opennotr" picks rows of --netns/--wan too, and then writes nothing)
"""

import argparse
import datetime
import json
import os
import re
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


def build_opennotr(wan=False):
    extra = ["-p", "opennotr-wan"] if wan else []
    subprocess.run(["cargo", "build", "--release", "-p", "opennotr"] + extra, cwd=ROOT, check=True)
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


def iperf(port, args, secs, host="127.0.0.1", ns=False, netns=None):
    """One iperf3 run (in the benchmark's namespace if `ns`, or in `netns`): Mbit/s received, and loss for UDP."""
    cmd = ["iperf3", "-c", host, "-p", str(port), "-t", str(secs), "-J"] + args
    if netns:
        cmd = ["ip", "netns", "exec", netns] + cmd
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


# ------------------------------------------------------------- namespaces and WAN

# Addresses from 198.18.0.0/15 (reserved for benchmarks), only ever inside
# the run's own namespaces.
VISITOR_ADDR = "198.18.1.1"
SERVER_PUBLIC = "198.18.1.2"   # the server's side of the visitor link
SERVER_WAN = "198.18.2.1"      # the server's side of the server-client link
CLIENT_ADDR = "198.18.2.2"

# The service in the client namespace: a TCP server that answers the first
# bytes of a request at once (time to first byte) and a UDP echo.
SERVICE = r"""
import socket, sys, threading
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(512)
    def serve(c):
        try:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if c.recv(4096):
                c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except OSError:
            pass
        finally:
            c.close()
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
def echo(port):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", port))
    while True:
        d, a = u.recvfrom(65536)
        u.sendto(d, a)
threading.Thread(target=echo, args=(int(sys.argv[2]),), daemon=True).start()
t = threading.Thread(target=tcp, args=(int(sys.argv[1]),), daemon=True); t.start()
print("ready", flush=True)
t.join()
"""

_libc = None


def ns_call(ns, fn, *args):
    """Runs fn(*args) on a thread that entered network namespace `ns`
    (Python 3.11 has no os.setns; setns moves only the calling thread).
    Sockets made there stay in `ns`."""
    global _libc
    import ctypes
    import threading
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    out = {}

    def run():
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if _libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
                raise OSError(ctypes.get_errno(), f"setns {ns}")
            out["v"] = fn(*args)
        except BaseException as e:
            out["e"] = e
        finally:
            os.close(fd)
    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "e" in out:
        raise out["e"]
    return out["v"]


def sh(*args):
    subprocess.run(list(args), check=True, capture_output=True)


class Topology:
    """visitor --veth-- server --(veth, or notr-wan)-- client, each a network
    namespace of this run (pid-suffixed names, removed on exit). The server
    routes between its two links; the client's default route leads to it."""

    def __init__(self, wan_bin=None):
        self.ns = {r: f"onb-{r}-{os.getpid()}" for r in ("visitor", "server", "client")}
        self.wan_bin = wan_bin
        self.wan = None
        self.wan_out = None

    def __enter__(self):
        try:
            self._create()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _create(self):
        v, s, c = self.ns["visitor"], self.ns["server"], self.ns["client"]
        for ns in (v, s, c):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "link", "add", "up0", "netns", v, "type", "veth", "peer", "name", "vis0", "netns", s)
        sh("ip", "-n", v, "addr", "add", f"{VISITOR_ADDR}/24", "dev", "up0")
        sh("ip", "-n", s, "addr", "add", f"{SERVER_PUBLIC}/24", "dev", "vis0")
        for ns, dev in ((v, "up0"), (s, "vis0")):
            sh("ip", "-n", ns, "link", "set", dev, "mtu", "1500", "up")
        sh("ip", "-n", v, "route", "add", "default", "via", SERVER_PUBLIC)
        sh("ip", "netns", "exec", s, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        if not self.wan_bin:
            sh("ip", "link", "add", "cli0", "netns", s, "type", "veth", "peer", "name", "up0", "netns", c)
            sh("ip", "-n", s, "addr", "add", f"{SERVER_WAN}/24", "dev", "cli0")
            sh("ip", "-n", c, "addr", "add", f"{CLIENT_ADDR}/24", "dev", "up0")
            for ns, dev in ((s, "cli0"), (c, "up0")):
                sh("ip", "-n", ns, "link", "set", dev, "mtu", "1500", "up")
            sh("ip", "-n", c, "route", "add", "default", "via", SERVER_WAN)

    def start_wan(self, opts):
        """(Re)starts notr-wan between server and client with `opts` and
        waits for its ready line; the client's default route goes into it."""
        self.stop_wan()
        self.wan = subprocess.Popen(
            [self.wan_bin, "--ns-a", self.ns["server"], "--ns-b", self.ns["client"], "--addr-a", SERVER_WAN,
             "--addr-b", CLIENT_ADDR, "--route-b", "default"] + opts,
            stdout=subprocess.PIPE, text=True)
        line = self.wan.stdout.readline()
        if '"ready"' not in line:
            raise RuntimeError(f"notr-wan did not start: {line!r}, exit {self.wan.poll()}")

    def stop_wan(self):
        """Stops notr-wan; returns its final counters."""
        if not self.wan:
            return None
        self.wan.send_signal(signal.SIGTERM)
        out, _ = self.wan.communicate(timeout=10)
        self.wan = None
        for line in out.splitlines():
            if '"exit"' in line:
                return json.loads(line)
        return None

    def exec(self, role, args):
        return ["ip", "netns", "exec", self.ns[role]] + args

    def __exit__(self, *exc):
        try:
            self.stop_wan()
        finally:
            for ns in self.ns.values():
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class Ports:
    """The service's ports in the client namespace and the public ports the
    visitor uses for them. Any port is free in a fresh namespace; free_port
    only keeps them distinct and unpredictable."""

    def __init__(self):
        self.iperf, self.ttfb, self.echo = free_port(), free_port(), free_port()
        self.pub_iperf, self.pub_ttfb, self.pub_echo = free_port(), free_port(), free_port()
        self.ctrl = free_port()


def notr_path(release, topo, procs, ports, tmp, opts):
    """opennotrd in the server namespace, opennotr in the client's. `opts`:
    plaintext (bool), client / server (extra top-level client keys and
    keys under `server:`, e.g. {"transport": "quic"})."""
    plain = opts.get("plaintext", False)
    key = "bench-key"
    sextra = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in opts.get("server", {}).items())
    cextra = "".join(f"{k}: {json.dumps(v)}\n" for k, v in opts.get("client", {}).items())
    sconf = os.path.join(tmp, "net-notrd.yaml")
    with open(sconf, "w") as f:
        f.write(f"""server:
  listen: "{SERVER_WAN}:{ports.ctrl}"
  authKey: "{key}"
  domain: "bench.notr.test"
  allowPlaintext: {str(plain).lower()}
{sextra}dhcp:
  cidr: "100.64.242.1/24"
plugin:
  tcp: '{{"bind": "{SERVER_PUBLIC}"}}'
  udp: '{{"bind": "{SERVER_PUBLIC}"}}'
""")
    cconf = os.path.join(tmp, "net-client.yaml")
    with open(cconf, "w") as f:
        f.write(f"""serverAddr: "{SERVER_WAN}:{ports.ctrl}"
key: "{key}"
plaintext: {str(plain).lower()}
{cextra}forwards:
  - protocol: tcp
    ports:
      {ports.pub_iperf}: {ports.iperf}
      {ports.pub_ttfb}: {ports.ttfb}
  - protocol: udp
    ports:
      {ports.pub_iperf}: {ports.iperf}
      {ports.pub_echo}: {ports.echo}
""")
    env = dict(os.environ, RUST_LOG="warn")
    s = procs.start(topo.exec("server", [os.path.join(release, "opennotrd"), "-c", sconf]), env=env)
    ns_call(topo.ns["server"], wait_port_at, SERVER_WAN, ports.ctrl)
    errlog = open(os.path.join(tmp, "net-client.err"), "w+")
    c = procs.start(topo.exec("client", [os.path.join(release, "opennotr"), "-c", cconf]), env=env, stderr=errlog)
    return SERVER_PUBLIC, s, c, errlog


def rathole_path(bins, topo, procs, ports, tmp, opts):
    tls = opts.get("tls", False)
    transport_s = transport_c = ""
    if tls:
        key, crt, pfx = (os.path.join(tmp, n) for n in ("net-key.pem", "net-crt.pem", "net-id.pfx"))
        if not os.path.exists(pfx):
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                            "-out", crt, "-days", "2", "-subj", "/CN=localhost",
                            "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
            subprocess.run(["openssl", "pkcs12", "-export", "-out", pfx, "-inkey", key, "-in", crt,
                            "-passout", "pass:1234"], check=True, capture_output=True)
        transport_s = f'[server.transport]\ntype = "tls"\n[server.transport.tls]\npkcs12 = "{pfx}"\npkcs12_password = "1234"\n'
        transport_c = f'[client.transport]\ntype = "tls"\n[client.transport.tls]\ntrusted_root = "{crt}"\nhostname = "localhost"\n'
    services = (("t", "tcp", ports.pub_iperf, ports.iperf), ("f", "tcp", ports.pub_ttfb, ports.ttfb),
                ("u", "udp", ports.pub_iperf, ports.iperf), ("e", "udp", ports.pub_echo, ports.echo))
    sconf = os.path.join(tmp, "net-rathole-server.toml")
    with open(sconf, "w") as f:
        f.write(f'[server]\nbind_addr = "{SERVER_WAN}:{ports.ctrl}"\n{transport_s}')
        for name, kind, pub, _ in services:
            f.write(f'[server.services.{name}]\ntype = "{kind}"\ntoken = "k"\nbind_addr = "{SERVER_PUBLIC}:{pub}"\n')
    cconf = os.path.join(tmp, "net-rathole-client.toml")
    with open(cconf, "w") as f:
        f.write(f'[client]\nremote_addr = "{SERVER_WAN}:{ports.ctrl}"\n{transport_c}')
        for name, kind, _, local in services:
            f.write(f'[client.services.{name}]\ntype = "{kind}"\ntoken = "k"\nlocal_addr = "127.0.0.1:{local}"\n')
    env = dict(os.environ, RUST_LOG="warn")
    s = procs.start(topo.exec("server", [os.path.join(bins, "rathole"), "--server", sconf]), env=env)
    ns_call(topo.ns["server"], wait_port_at, SERVER_WAN, ports.ctrl)
    c = procs.start(topo.exec("client", [os.path.join(bins, "rathole"), "--client", cconf]), env=env)
    return SERVER_PUBLIC, s, c, None


def direct_path(topo, procs, ports, tmp, opts):
    return CLIENT_ADDR, None, None, None


def net_paths(release, bins, wan):
    """The paths of the network suites: name -> start(topo, procs, ports,
    tmp) -> (host the visitor dials, server proc, client proc, client
    stderr file or None). A new transport is one more line."""
    quic = {"server": {"quic": True}, "client": {"transport": "quic"}}
    def notr(opts):
        return lambda *a: notr_path(release, *a, opts)

    def rathole(opts):
        return lambda *a: rathole_path(bins, *a, opts)

    direct = lambda *a: direct_path(*a, {})  # noqa: E731
    if wan:
        return [
            ("direct", direct),
            ("opennotr", notr({})),
            # spareChannels: pre-opened data channels; a client that does
            # not know the key refuses it.
            ("opennotr, no spare channels", notr({"client": {"spareChannels": 0}})),
            ("opennotr quic", notr(quic)),
            ("rathole tls", rathole({"tls": True})),
            ("rathole plain", rathole({"tls": False})),
        ]
    return [
        ("direct", direct),
        ("opennotr plain", notr({"plaintext": True})),
        ("opennotr encrypted", notr({})),
        ("opennotr quic", notr(quic)),
        ("rathole plain", rathole({"tls": False})),
        ("rathole tls", rathole({"tls": True})),
    ]


def only_names(only):
    """--only's row names. A comma followed by a space belongs to a name
    ("opennotr, no spare channels"), so only a bare comma separates."""
    return [n.strip() for n in re.split(r",(?! )", only) if n.strip()]


def wait_port_at(host, port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port} after {timeout}s")


def ttfb(host, port, timeout=10.0):
    """ms from connect() to the first byte of the answer to a small request."""
    t0 = time.perf_counter()
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        if not s.recv(1):
            raise RuntimeError("closed before the first byte")
        return (time.perf_counter() - t0) * 1000


def ttfb_samples(host, port, n):
    return [ttfb(host, port) for _ in range(n)]


def udp_probe(host, port, count, interval, size=64):
    """Sends `count` numbered datagrams of `size` bytes `interval` s apart
    to an echo from a fresh socket (a new flow for the tunnel) and returns
    the round trips (ms) of those that came back within 2 s of the last
    send, in order of their numbers, the first datagram's (None if lost),
    and how many were lost."""
    import select
    import struct
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect((host, port))
    sent, rtts = {}, {}
    start = time.perf_counter()
    seq = 0
    end = None
    while True:
        now = time.perf_counter()
        if seq < count and now >= start + seq * interval:
            sent[seq] = now
            u.send(struct.pack("!I", seq) + b"x" * (size - 4))
            seq += 1
            if seq == count:
                end = now + 2.0
            continue
        if end and now >= end:
            break
        wake = start + seq * interval if seq < count else end
        r, _, _ = select.select([u], [], [], max(0.0, wake - now))
        if r:
            d = u.recv(2048)
            n = struct.unpack("!I", d[:4])[0]
            if n in sent:
                rtts[n] = (time.perf_counter() - sent.pop(n)) * 1000
    u.close()
    return [rtts[n] for n in sorted(rtts)], rtts.get(0), len(sent)


def udp_warm_up(host, port, attempts=40):
    for _ in range(attempts):
        if _one_echo(host, port):
            return
    raise RuntimeError(f"no UDP echo through {host}:{port}")


def _one_echo(host, port):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(0.5)
    try:
        u.sendto(b"warm-up", (host, port))
        u.recv(2048)
        return True
    except OSError:
        return False
    finally:
        u.close()


def pct(values, p):
    """Nearest-rank percentile."""
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(-(-p * len(v) // 100)) - 1))]


def net_path_run(name, start, topo, tmp, measure):
    """Starts the client namespace's services and path `name`, waits until
    a request gets an answer through it, and returns measure(host, ports,
    procs) merged into the row. A client that exits 64 (strict config: a
    key it does not know) makes the row skipped, not failed."""
    procs = Procs()
    ports = Ports()
    row = {"name": name}
    errlog = None
    try:
        procs.start(topo.exec("client", ["iperf3", "-s", "-p", str(ports.iperf)]))
        svc = procs.start(topo.exec("client", [sys.executable, "-c", SERVICE, str(ports.ttfb), str(ports.echo)]),
                          stdout=subprocess.PIPE, text=True)
        if svc.stdout.readline().strip() != "ready":
            raise RuntimeError("the service did not start")
        ns_call(topo.ns["client"], wait_port_at, "127.0.0.1", ports.iperf)
        host, s, c, errlog = start(topo, procs, ports, tmp)
        direct = s is None
        p_ttfb = ports.ttfb if direct else ports.pub_ttfb
        last = None
        for _ in range(120):
            if c is not None and c.poll() is not None:
                err = ""
                if errlog:
                    errlog.seek(0)
                    err = errlog.read().strip().splitlines()[-1:] or [""]
                    err = err[0]
                if c.returncode == 64:
                    key = re.search(r"unknown key `([^`]+)`", err)
                    row["skipped"] = (f"this client does not know `{key.group(1)}` (strict config, exit 64)" if key
                                      else f"the client refused its config (exit 64): {err[:160]}")
                    print(f"{name}: skipped: {row['skipped']}", flush=True)
                    return row
                raise RuntimeError(f"the client exited {c.returncode}: {err}")
            try:
                ns_call(topo.ns["visitor"], ttfb, host, p_ttfb, 2.0)
                break
            except Exception as e:  # not up yet
                last = e
                time.sleep(0.25)
        else:
            raise RuntimeError(f"no answer through the path: {last}")
        ports_seen = {"iperf": ports.iperf if direct else ports.pub_iperf, "ttfb": p_ttfb,
                      "echo": ports.echo if direct else ports.pub_echo}
        ns_call(topo.ns["visitor"], udp_warm_up, host, ports_seen["echo"])
        row.update(measure(topo, host, ports_seen))
        if s is not None:
            row["rss_server_kb"] = peak_rss_kb(s.pid)
            row["rss_client_kb"] = peak_rss_kb(c.pid)
    except Exception as e:  # a failed path is reported, not fatal
        row["error"] = str(e)
    finally:
        procs.stop()
        if errlog:
            errlog.close()
    print(json.dumps(row), flush=True)
    return row


def netns_suite(release, bins, args, tmp):
    """Three namespaces joined by veth (no delay): iperf3 from the visitor."""
    def measure(topo, host, p):
        v = topo.ns["visitor"]
        return {"tcp1": iperf(p["iperf"], [], args.time, host=host, netns=v),
                "tcp8": iperf(p["iperf"], ["-P", "8"], args.time, host=host, netns=v),
                "udp": iperf(p["iperf"], ["-u", "-b", args.udp_rate, "-l", "1400"], args.time, host=host, netns=v)}
    results = []
    with Topology() as topo:
        for name, start in net_paths(release, bins, wan=False):
            if args.only and name not in only_names(args.only):
                continue
            results.append(net_path_run(name, start, topo, tmp, measure))
    return results


def wan_suite(release, bins, wan_bin, args, tmp):
    """The server-client link through notr-wan: per loss setting, TTFB,
    TCP, UDP loss at a fixed rate and UDP echo latency on every path. First
    the emulator's own capacity: direct iperf3 through it at 0 ms, 0 %."""
    losses = [x.strip() for x in args.wan_loss.split(",") if x.strip()]
    results = {"capacity": {}, "runs": []}
    with Topology(wan_bin=wan_bin) as topo:
        v = topo.ns["visitor"]
        topo.start_wan(["--delay", "0"])
        procs = Procs()
        try:
            port = free_port()
            procs.start(topo.exec("client", ["iperf3", "-s", "-p", str(port)]))
            ns_call(topo.ns["client"], wait_port_at, "127.0.0.1", port)
            cap = results["capacity"]
            for key, extra in (("tcp1", []), ("tcp8", ["-P", "8"])):
                try:
                    cap[key] = iperf(port, extra, args.time, host=CLIENT_ADDR, netns=v)
                except Exception as e:
                    cap[key] = {"error": str(e)}
            cap["wan"] = topo.stop_wan()
            print(json.dumps({"capacity": cap}), flush=True)
        finally:
            procs.stop()

        def measure(topo, host, p):
            r = {}
            samples = ns_call(v, ttfb_samples, host, p["ttfb"], args.ttfb_samples)
            r["ttfb"] = {"p50": pct(samples, 50), "p90": pct(samples, 90), "p99": pct(samples, 99),
                         "n": len(samples), "samples": samples}
            # The echo probes go before the iperf3 runs, so they do not
            # queue behind what a tunnel still buffers from a flood.
            rtts, first, lost = ns_call(v, udp_probe, host, p["echo"], args.probe_count,
                                        args.probe_interval / 1000)
            r["echo"] = {"p50": pct(rtts, 50), "p90": pct(rtts, 90), "p99": pct(rtts, 99), "lost": lost,
                         "n": args.probe_count, "first": first}
            r["tcp1"] = iperf(p["iperf"], [], args.wan_time, host=host, netns=v)
            r["udp"] = iperf(p["iperf"], ["-u", "-b", args.wan_udp_rate, "-l", "1400"], args.wan_time,
                             host=host, netns=v)
            if args.echo_during_flood:
                # The flow itself is the flood: 1400-byte datagrams at
                # --wan-udp-rate to the echo for --wan-time, each one's round
                # trip measured. How late a datagram is when its flow offers
                # more than the tunnel carries.
                rate = float(args.wan_udp_rate.rstrip("Mm")) * 1e6
                interval = 1400 * 8 / rate
                count = int(args.wan_time / interval)
                rtts, _, lost = ns_call(v, udp_probe, host, p["echo"], count, interval, 1400)
                r["echo_flood"] = {"p50": pct(rtts, 50), "p90": pct(rtts, 90), "p99": pct(rtts, 99),
                                   "lost": lost, "n": count}
            return r

        for loss in losses:
            topo.start_wan(["--delay", str(args.wan_delay), "--loss", loss, "--seed", "1"])
            rows = []
            for name, start in net_paths(release, bins, wan=True):
                if args.only and name not in only_names(args.only):
                    continue
                rows.append(net_path_run(name, start, topo, tmp, measure))
            counters = topo.stop_wan()
            results["runs"].append({"loss": loss, "rows": rows, "wan": counters})
    return results


def netns_report(results, meta):
    if not results:
        return ""
    by = {r["name"]: r for r in results}
    pairs = {"opennotr plain": "rathole plain", "opennotr encrypted": "rathole tls", "opennotr quic": "rathole tls"}
    lines = ["", "## Three namespaces (veth)", "",
             f"Produced by `{meta.get('cmd', 'python3 bench/run.py --netns')}` on {meta.get('date', '?')} "
             f"({meta.get('cores', '?')} cores, load average {meta.get('load', '?')} before the run, "
             f"{meta.get('secs', '?')} s per iperf3 run, UDP offered at `-b {meta.get('udp_rate', '?')} -l 1400`).",
             "iperf3 runs in the visitor namespace, its server in the client namespace; the tunnel server in",
             "the server namespace, the tunnel client in the client namespace (topology in the section above).",
             "Throughput in Mbit/s. Ratios as in the loopback table: opennotr rows against the matching",
             "rathole row, the others against direct.", "",
             "| path | TCP 1 stream | TCP 8 streams | UDP | peak RSS server / client |",
             "|---|---|---|---|---|"]
    for r in results:
        if "error" in r or "skipped" in r:
            lines.append(f"| {r['name']} | {'error' if 'error' in r else 'skipped'}: {r.get('error', r.get('skipped'))} | | | |")
            continue
        base = by.get(pairs.get(r["name"], "direct")) if r["name"] != "direct" else None
        rss = "—"
        if r.get("rss_server_kb"):
            rss = f"{r['rss_server_kb'] / 1024:.1f} MB / {r['rss_client_kb'] / 1024:.1f} MB"
        lines.append(f"| {r['name']} | {fmt(r, 'tcp1', base)} | {fmt(r, 'tcp8', base)} | {fmt(r, 'udp', None)} | {rss} |")
    return "\n".join(lines) + "\n"


def wan_report(results, meta):
    if not results or not results.get("runs"):
        return ""
    cap = results.get("capacity", {})

    def mbps(x):
        return f"{x['mbps']:.0f}" if x and "mbps" in x else (x or {}).get("error", "n/a")

    def ms(x):
        return "n/a" if x is None else f"{x:.1f}"

    lines = ["", f"## WAN ({2 * float(meta.get('delay', 25)):g} ms RTT, user-space delay line)", "",
             f"Produced by `{meta.get('cmd', 'python3 bench/run.py --wan')}` on {meta.get('date', '?')} "
             f"({meta.get('cores', '?')} cores, load average {meta.get('load', '?')} before the run).",
             f"The server-client link is notr-wan with {meta.get('delay', '?')} ms one-way delay each way and the "
             "loss of the row (each direction, seed 1); the visitor link is a plain veth.",
             f"TTFB: {meta.get('ttfb_samples', '?')} sequential fresh TCP connections from the visitor, a small "
             "request, time until the first byte of the answer (ms). TCP: iperf3, one stream, "
             f"{meta.get('secs', '?')} s (Mbit/s" + (f", congestion control {meta['cc']}" if meta.get("cc") else "")
             + f"). UDP: iperf3 `-u -b {meta.get('udp_rate', '?')} -l 1400` "
             f"(loss), and {meta.get('probe_count', '?')} echo probes {meta.get('probe_interval', '?')} ms apart "
             "through the UDP forward from a new source port (round trip ms, all probes; first = the flow's "
             "first datagram; lost = no echo within 2 s).",
             f"Emulator capacity (direct iperf3 through notr-wan at 0 ms, 0 % loss, MTU 1500): "
             f"{mbps(cap.get('tcp1'))} Mbit/s one stream, {mbps(cap.get('tcp8'))} Mbit/s 8 streams.", "",
             "| loss | path | TTFB p50 | p90 | p99 | TCP | UDP loss | echo first | p50 | p90 | p99 | echo lost |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        for r in run["rows"]:
            head = f"| {run['loss']} % | {r['name']} |"
            if "error" in r or "skipped" in r:
                what = "error" if "error" in r else "skipped"
                lines.append(f"{head} {what}: {r.get('error', r.get('skipped'))} | | | | | | | | | |")
                continue
            t, e, u = r.get("ttfb", {}), r.get("echo", {}), r.get("udp", {})
            lines.append(f"{head} {ms(t.get('p50'))} | {ms(t.get('p90'))} | {ms(t.get('p99'))} | "
                         f"{mbps(r.get('tcp1'))} | {u.get('loss_pct', float('nan')):.2f} % | {ms(e.get('first'))} | "
                         f"{ms(e.get('p50'))} | "
                         f"{ms(e.get('p90'))} | {ms(e.get('p99'))} | {e.get('lost', 'n/a')}/{e.get('n', '?')} |")
    counters = []
    for run in results["runs"]:
        w = run.get("wan") or {}
        parts = []
        for d in ("a_to_b", "b_to_a"):
            c = w.get(d)
            if c and c.get("received"):
                parts.append(f"{'server→client' if d == 'a_to_b' else 'client→server'} {c['lost']} of "
                             f"{c['received']} ({100 * c['lost'] / c['received']:.2f} %)")
        if parts:
            counters.append(f"{run['loss']} %: " + ", ".join(parts))
    if counters:
        lines += ["", "Packets the emulator dropped at random, per setting: " + "; ".join(counters) + "."]
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
    ap.add_argument("--netns", action="store_true",
                    help="only the three-namespace suite (root): visitor, server and client joined by veth")
    ap.add_argument("--wan", action="store_true",
                    help="only the WAN suite (root): the server-client link through notr-wan")
    ap.add_argument("--wan-delay", type=float, default=25, help="WAN suite: one-way delay in ms, each way")
    ap.add_argument("--wan-loss", default="0,0.1,1", help="WAN suite: loss settings in percent, comma-separated")
    ap.add_argument("--wan-time", type=int, default=10, help="WAN suite: seconds per iperf3 run")
    ap.add_argument("--wan-udp-rate", default="50M", help="WAN suite: iperf3 -u -b")
    ap.add_argument("--ttfb-samples", type=int, default=40, help="WAN suite: sequential connections per path")
    ap.add_argument("--probe-count", type=int, default=200, help="WAN suite: UDP echo probes per path")
    ap.add_argument("--echo-during-flood", action="store_true",
                    help="WAN suite: also time every datagram of a flow that floods the UDP echo at --wan-udp-rate (JSON only: echo_flood)")
    ap.add_argument("--probe-interval", type=float, default=20, help="WAN suite: ms between UDP echo probes")
    ap.add_argument("--wan-bin", help="notr-wan binary (default: from --bin-dir or the release build)")
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
        update_doc(doc, tunnels, vip_report(saved.get("vip", [])), gw,
                   netns_report(saved.get("netns", []), saved.get("netns_meta", {})),
                   wan_report(saved.get("wan", {}), saved.get("wan_meta", {})))
        return
    network = args.netns or args.wan
    if network and os.geteuid() != 0:
        sys.exit("--netns and --wan need root (network namespaces, TUN devices)")
    # SIGTERM unwinds like Ctrl-C, so the namespaces and processes go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bins = ensure_tools()
    release = args.bin_dir or build_opennotr(wan=args.wan)
    wan_bin = args.wan_bin or os.path.join(release, "notr-wan")
    if not os.path.exists(wan_bin):
        wan_bin = os.path.join(ROOT, "target", "release", "notr-wan")
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
    net_results, net_meta, wan_results, wan_meta = [], {}, {}, {}
    meta = {"cmd": cmd.strip(), "date": str(datetime.date.today()), "cores": os.cpu_count(),
            "load": "%.2f" % os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        if args.netns:
            net_meta = dict(meta, secs=args.time, udp_rate=args.udp_rate)
            net_results = netns_suite(release, bins, args, tmp)
        if args.wan:
            with open("/proc/sys/net/ipv4/tcp_congestion_control") as f:
                cc = f.read().strip()  # new namespaces start with the host's
            wan_meta = dict(meta, load="%.2f" % os.getloadavg()[0], delay=args.wan_delay, secs=args.wan_time, cc=cc,
                            udp_rate=args.wan_udp_rate, ttfb_samples=args.ttfb_samples,
                            probe_count=args.probe_count, probe_interval=args.probe_interval)
            wan_results = wan_suite(release, bins, wan_bin, args, tmp)
        for name, setup in suites:
            if network or args.vip or args.gateway or (only and name not in only):
                continue
            results.append(run_suite(name, setup, args.time, args.udp_rate, tmp))
        if not only and not args.gateway and not network:
            vip_results = vip_suite(release, args.time, args.udp_rate, tmp)
        if (not only and not args.vip and not network) or args.gateway:
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
        json.dump({"tunnels": results, "vip": vip_results, "gateway": gw_results, "gateway_meta": gw_meta,
                   "netns": net_results, "netns_meta": net_meta, "wan": wan_results, "wan_meta": wan_meta}, f,
                  indent=1)
    # Each part of the run replaces its own section; a partial run (--only)
    # only prints its table.
    tunnels = write_report(results, args, cmd) if results and not only else ""
    vip = vip_report(vip_results)
    gw = gateway_report(gw_results, gw_meta)
    net = netns_report(net_results, net_meta)
    wan = wan_report(wan_results, wan_meta)
    print((write_report(results, args, cmd) if results else "") + vip + gw + net + wan)
    if only and network:
        net = wan = ""  # a partial table would replace the whole one
    if not args.no_report:
        update_doc(doc, tunnels, vip, gw, net, wan)


if __name__ == "__main__":
    main()
