#!/usr/bin/env python3
"""Faults and soak: many clients coming and going with traffic, and faults,
checked for recovery and for leaks. Linux, root; Python 3 stdlib only.

Everything runs in network namespaces of the run's own, joined by veth
pairs (nothing touches the host's network):

  server ns    opennotrd (virtual LAN on: tcplisten/udplisten, nftables),
               etcd (127.0.0.1:2379), the admin API (127.0.0.1:7070)
  client hosts --per-host opennotr processes each (default 25: fewer than
               limits.maxHandshakesPerIp, as clients on separate hosts),
               and an echo service (TCP 7000, UDP 7001) they forward to
  visitor ns   visitors of the clients' public TCP and UDP ports

Each client has a tcp forward (0 -> 7000) and a udp forward (0 -> 7001) and
its own domain. Visitors send TCP and UDP echoes through the public ports,
and the server namespace sends echoes to the clients' VIPs (virtual LAN).

The run (bounded by --duration, faults included):

  churn       clients leave (SIGTERM, one in five SIGKILL) and new ones
              (new domain) take their place, at --churn-rate a second;
              one in ten clients never churns (its fds and RSS are watched)
  faults      kill -9 of clients; etcd stopped and restarted; etcd stopped,
              its data wiped, restarted; kill -9 of opennotrd and restart;
              the client hosts' links cut (clients killed meanwhile) and
              restored
  steady      before and after each fault, churn stops, every slot has a
              registered client and visitor traffic pauses; then the
              server's state must equal what the live clients hold, exactly:
              sessions and VIPs (admin API), public ports bound (ss),
              nftables `exported` elements, etcd keys (and their lease), and
              the same file descriptors as the first steady point (those to
              etcd aside); memory (VmRSS) at most 1.2x + 8 MiB of a warm
              reference (docs/soak.md)

Any violation (a leak, a stale element or key, a client that does not
reconnect within reconnectMaxDelay + handshakeTimeout, an echo lost to a
client that stayed connected) is printed and makes the exit code 1. The
result (samples every few seconds, steady points, faults, traffic) goes to
bench/results/soak-<timestamp>.json; --report writes docs/soak.md's
generated section. This is a soak, not a test: CI runs only `--short`.

Usage: python3 bench/soak.py [--clients 200] [--duration 600] [--short]
           [--bin-dir target/debug] [--report]
"""

import argparse
import base64
import ctypes
import datetime
import http.client
import json
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
DOC = os.path.join(ROOT, "docs", "soak.md")

# Timing of the run's server and clients (written into their files).
KEEPALIVE_INTERVAL = 2
KEEPALIVE_TIMEOUT = 6
HANDSHAKE_TIMEOUT = 5
RECONNECT_MAX_DELAY = 5
LEASE_TTL = 10
# The udp plugin's sessionTimeout: visitors' UDP flows end this soon after
# their last datagram, so steady points need not wait long for them.
UDP_FLOW_IDLE = 2
# etcd publishing retries, doubling up to this (docs/dns.md), plus one
# request's timeout.
ETCD_RETRY_MAX = 10
ETCD_REQUEST_TIMEOUT = 5
# Memory at a later steady point may be at most this much above a warm
# earlier one (same clients, same kinds of flows open).
RSS_FACTOR = 1.2
RSS_SLACK_KB = 8192
# Slack on every bound, for a loaded 2-core machine running debug builds.
SLACK = 5.0

# Inside the private namespaces, fixed ports and addresses are fine.
CONTROL_PORT = 10100
ADMIN_PORT = 7070
ETCD_PORT = 2379
ECHO_TCP = 7000
ECHO_UDP = 7001
# Each slot sends its VIP UDP echoes from 127.0.0.1:VIP_UDP_PEER+slot (above
# the ephemeral range). The server keeps a VIP UDP flow (one peer, one
# VIP:port) for 30 s after its last datagram, whatever its settings; with a
# fixed peer a client has at most one, and a steady point, after one echo to
# every client, has exactly one per client.
VIP_UDP_PEER = 61000
PORT_MIN, PORT_MAX = 20000, 29999
ZONE = "soak.notr.test"
ETCD_PREFIX = "/skydns"
VISITOR_NET = 250  # 10.77.250.0/24: server .1, visitor .2
PUBLIC_IP = f"10.77.{VISITOR_NET}.1"
ROUTE_TABLE = "20047"

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

T0 = time.monotonic()


def now():
    return time.monotonic() - T0


def say(msg):
    print(f"[{now():7.1f}s] {msg}", flush=True)


class Fatal(Exception):
    """The run cannot go on (a process died, a namespace is gone)."""


# ------------------------------------------------------------------ namespaces and commands


def run(args, ns=None, check=True, timeout=30):
    """Runs a command (in `ns` if given) to completion; its stdout."""
    if ns:
        args = ["ip", "netns", "exec", ns] + args
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise Fatal(f"{' '.join(args)}: exit {p.returncode}: {p.stderr.strip()}")
    return p.stdout


def ns_socket(ns, family=socket.AF_INET, kind=socket.SOCK_STREAM):
    """A socket of namespace `ns`: made by a thread that joined it (setns
    changes only the calling thread), usable from any thread afterwards."""
    box = {}

    def make():
        try:
            fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, f"setns {ns}: {os.strerror(e)}")
            finally:
                os.close(fd)
            box["s"] = socket.socket(family, kind)
        except BaseException as e:  # handed to the caller
            box["e"] = e

    t = threading.Thread(target=make)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["s"]


def http_ns(ns, port, method, path, body=None, headers=None, timeout=5.0):
    """One HTTP/1.1 request to 127.0.0.1:`port` of `ns`: (status, body)."""
    s = ns_socket(ns)
    s.settimeout(timeout)
    try:
        s.connect(("127.0.0.1", port))
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.sock = s
        h = {"Connection": "close"}
        h.update(headers or {})
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, data
    finally:
        s.close()


def b64(s):
    return base64.b64encode(s.encode()).decode()


def etcd_key(domain):
    return ETCD_PREFIX + "/" + "/".join(reversed(domain.split(".")))


# ------------------------------------------------------------------ the echo service (client hosts)

ECHO = r"""
import asyncio, sys
async def handle(r, w):
    try:
        while True:
            d = await r.read(65536)
            if not d:
                break
            w.write(d)
            await w.drain()
    except Exception:
        pass
    finally:
        w.close()
class Udp(asyncio.DatagramProtocol):
    def connection_made(self, t):
        self.t = t
    def datagram_received(self, d, a):
        self.t.sendto(d, a)
async def main():
    srv = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    await asyncio.get_running_loop().create_datagram_endpoint(Udp, local_addr=("127.0.0.1", int(sys.argv[2])))
    print("ready", flush=True)
    await srv.serve_forever()
asyncio.run(main())
"""


# ------------------------------------------------------------------ clients


class Client:
    """One opennotr process in a slot; a slot gets a new process (a new
    generation, with a new domain) each time its client is churned."""

    def __init__(self, slot, gen, host, domain, proc, log):
        self.slot, self.gen, self.host, self.domain = slot, gen, host, domain
        self.proc, self.log = proc, log
        self.started = now()
        self.up = False  # registered and not disconnected since
        self.vip = self.tcp = self.udp = None
        self.connects = []  # times of `connect success` (registration complete)
        self.disconnects = []
        self.refusals = []
        self.bad_forwards = []
        self.pending = None
        self.stopping = False
        self.exited = None
        self.buf = b""

    def live(self):
        return self.exited is None and not self.stopping

    def line(self, line, t):
        if line == "connect success":
            self.pending = {"t": t, "lines": []}
            return
        if self.pending is not None:
            p = self.pending
            p["lines"].append(line)
            if line.startswith("vhost: "):
                p["vip"] = line.split()[1]
            elif line.startswith("domain: "):
                p["domain"] = line.split()[1]
            elif " refused: " in line:
                self.bad_forwards.append(line)
            elif line.startswith("tcp://"):
                p["tcp"] = int(line.split(" => ")[0].rsplit(":", 1)[1])
            elif line.startswith("udp://"):
                p["udp"] = int(line.split(" => ")[0].rsplit(":", 1)[1])
            if len(p["lines"]) == 4:  # vhost, domain, two forwards
                self.pending = None
                if "tcp" in p and "udp" in p and p.get("domain") == self.domain:
                    self.vip, self.tcp, self.udp = p["vip"], p["tcp"], p["udp"]
                    self.connects.append(p["t"])
                    self.up = True
                else:
                    self.bad_forwards.append(f"registration {p['lines']}")
            return
        if line.startswith("disconnected: "):
            self.up = False
            self.disconnects.append((t, line[len("disconnected: "):]))
        elif line.startswith("refused by server "):
            self.refusals.append((t, line))


class Soak:
    def __init__(self, args, tmp):
        self.args = args
        self.tmp = tmp
        self.bins = args.bin_dir
        tag = str(os.getpid() % 100000)
        self.ns_s = f"onsk{tag}s"
        self.ns_v = f"onsk{tag}v"
        self.hosts = (args.clients + args.per_host - 1) // args.per_host
        self.ns_c = [f"onsk{tag}c{h}" for h in range(self.hosts)]
        self.veth_s = [f"sk{tag}s{h}" for h in range(self.hosts)]
        self.made_ns = []
        self.lock = threading.RLock()
        self.slots = {}  # slot -> current Client
        self.all_clients = []
        self.stable = set(range(0, args.clients, 10))  # never churned
        self.gen = {}
        self.server = None
        self.server_gen = 0
        self.server_log = None
        self.etcd = None
        self.echoes = []
        self.violations = []
        self.samples = []
        self.steadies = []
        self.faults = []
        self.baseline = None  # first steady point of the current server process
        self.first_baseline = None
        self.nft_shape0 = None
        self.stop = threading.Event()
        self.traffic_on = threading.Event()
        self.quiet = threading.Event()  # no fault in progress
        self.inflight = 0
        self.inflight_cv = threading.Condition()
        self.traffic = {k: {"ok": 0, "failed": 0, "excused": 0} for k in ("tcp", "udp", "vip_tcp", "vip_udp")}
        self.traffic_fail_samples = []
        self.churn_stats = {"sigterm": 0, "sigkill": 0, "started": 0, "slow_exit": 0}
        self.sel = selectors.DefaultSelector()
        self.new_clients = []  # for the monitor to register
        self.wake_r, self.wake_w = os.pipe()
        self.sel.register(self.wake_r, selectors.EVENT_READ, None)
        self.obs_lock = threading.Lock()  # one snapshot at a time: each opens connections to the server
        self.key = os.urandom(16).hex()
        self.token = os.urandom(16).hex()
        self.threads = []
        self.vip_udp_locks = [threading.Lock() for _ in range(args.clients)]

    # -------------------------------------------------------------- violations

    def violate(self, what):
        say(f"VIOLATION: {what}")
        self.violations.append({"t": round(now(), 1), "what": what})

    # -------------------------------------------------------------- network

    def make_net(self):
        names = [self.ns_s, self.ns_v] + self.ns_c
        for ns in names:
            run(["ip", "netns", "del", ns], check=False)  # a leftover of a crashed run with our pid
            run(["ip", "netns", "add", ns])
            self.made_ns.append(ns)
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        tag = self.ns_s[4:-1]
        pairs = [(self.veth_s[h], f"sk{tag}c{h}", self.ns_c[h], h) for h in range(self.hosts)]
        pairs.append((f"sk{tag}sv", f"sk{tag}v", self.ns_v, VISITOR_NET))
        for vs, vc, ns, net in pairs:
            run(["ip", "link", "add", "name", vs, "netns", self.ns_s, "type", "veth", "peer", "name", vc,
                 "netns", ns])
            run(["ip", "-n", self.ns_s, "addr", "add", f"10.77.{net}.1/24", "dev", vs])
            run(["ip", "-n", ns, "addr", "add", f"10.77.{net}.2/24", "dev", vc])
            run(["ip", "-n", self.ns_s, "link", "set", vs, "up"])
            run(["ip", "-n", ns, "link", "set", vc, "up"])

    def set_links(self, up):
        for vs in self.veth_s:
            run(["ip", "-n", self.ns_s, "link", "set", vs, "up" if up else "down"])

    # -------------------------------------------------------------- etcd

    def etcd_start(self):
        data = os.path.join(self.tmp, "etcd-data")
        url = f"http://127.0.0.1:{ETCD_PORT}"
        peer = f"http://127.0.0.1:{ETCD_PORT + 1}"
        log = open(os.path.join(self.tmp, "etcd.log"), "a")
        self.etcd = subprocess.Popen(
            ["ip", "netns", "exec", self.ns_s, self.args.etcd, "--name", "default", "--data-dir", data,
             "--listen-client-urls", url, "--advertise-client-urls", url, "--listen-peer-urls", peer,
             "--initial-advertise-peer-urls", peer, "--initial-cluster", f"default={peer}",
             "--heartbeat-interval", "50", "--election-timeout", "500"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                st, body = http_ns(self.ns_s, ETCD_PORT, "GET", "/health", timeout=1)
                if st == 200 and b"true" in body:
                    return now()
            except OSError:
                pass
            if self.etcd.poll() is not None:
                raise Fatal(f"etcd exited ({self.etcd.returncode}) at start; see {self.tmp}/etcd.log")
            time.sleep(0.05)
        raise Fatal("etcd not ready within 30 s")

    def etcd_stop(self, sig=signal.SIGTERM):
        self.etcd.send_signal(sig)
        self.etcd.wait(timeout=20)

    def etcd_records(self):
        """key -> (host, lease) of every record under the prefix."""
        body = json.dumps({"key": b64(ETCD_PREFIX + "/"), "range_end": b64(ETCD_PREFIX + "0")})
        st, data = http_ns(self.ns_s, ETCD_PORT, "POST", "/v3/kv/range", body=body)
        if st != 200:
            raise OSError(f"etcd range: {st} {data[:200]!r}")
        out = {}
        for kv in json.loads(data).get("kvs", []):
            k = base64.b64decode(kv["key"]).decode()
            try:
                host = json.loads(base64.b64decode(kv.get("value", ""))).get("host")
            except ValueError:
                host = None
            out[k] = (host, kv.get("lease", "0"))
        return out

    # -------------------------------------------------------------- opennotrd

    def write_server_conf(self):
        n = self.args.clients
        # A pool little larger than the clients: leaked VIPs soon show as
        # `pool_exhausted` refusals.
        cidr = "100.64.242.1/24" if n + 20 <= 253 else "100.64.0.1/16"
        path = os.path.join(self.tmp, "opennotrd.yaml")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(f"""server:
  listen: "0.0.0.0:{CONTROL_PORT}"
  authKey: "{self.key}"
  domain: "{ZONE}"
  publicIP: "{PUBLIC_IP}"
  tcplisten: "127.0.0.1:4398"
  udplisten: "127.0.0.1:4399"
  keepaliveInterval: {KEEPALIVE_INTERVAL}
  keepaliveTimeout: {KEEPALIVE_TIMEOUT}
  shutdownGrace: 1
dhcp:
  cidr: "{cidr}"
plugin:
  tcp: '{{"bind": "0.0.0.0", "PortMin": {PORT_MIN}, "PortMax": {PORT_MAX}}}'
  udp: '{{"bind": "0.0.0.0", "PortMin": {PORT_MIN}, "PortMax": {PORT_MAX}, "sessionTimeout": {UDP_FLOW_IDLE}}}'
resolver:
  etcdEndpoints: ["http://127.0.0.1:{ETCD_PORT}"]
  etcdPrefix: "{ETCD_PREFIX}"
  leaseTtl: {LEASE_TTL}
dns:
  listen: "127.0.0.1:5353"
admin:
  listen: "127.0.0.1:{ADMIN_PORT}"
  token: "{self.token}"
""")
        self.server_conf = path

    def server_start(self):
        self.server_gen += 1
        logpath = os.path.join(self.tmp, f"opennotrd-{self.server_gen}.log")
        log = open(logpath, "w")
        self.server = subprocess.Popen(
            ["ip", "netns", "exec", self.ns_s, os.path.join(self.bins, "opennotrd"), "-c", self.server_conf,
             "--log-level", "info"], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        self.server_log = logpath
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = open(logpath, errors="replace").read()
            if "listening for clients" in text and "listening for admin requests" in text:
                if "virtual LAN on" not in text:
                    raise Fatal(f"opennotrd did not turn the virtual LAN on; see {logpath}")
                return now()
            if self.server.poll() is not None:
                raise Fatal(f"opennotrd exited ({self.server.returncode}) at start:\n{text[-3000:]}")
            time.sleep(0.05)
        raise Fatal("opennotrd not listening within 30 s")

    def admin(self, path):
        st, data = http_ns(self.ns_s, ADMIN_PORT, "GET", path, headers={"Authorization": f"Bearer {self.token}"})
        if st != 200:
            raise OSError(f"admin {path}: {st}")
        return data

    def metrics(self):
        out = {}
        for line in self.admin("/metrics").decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    out[name] = float(value)
                except ValueError:
                    pass
        return out

    # -------------------------------------------------------------- clients

    def client_conf(self, slot, gen, host):
        domain = f"c{slot}g{gen}.{ZONE}"
        path = os.path.join(self.tmp, "clients", f"c{slot}g{gen}.yaml")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
            f.write(f"""serverAddr: "10.77.{host}.1:{CONTROL_PORT}"
key: "{self.key}"
domain: "{domain}"
workers: 1
keepaliveInterval: {KEEPALIVE_INTERVAL}
keepaliveTimeout: {KEEPALIVE_TIMEOUT}
handshakeTimeout: {HANDSHAKE_TIMEOUT}
reconnectMaxDelay: {RECONNECT_MAX_DELAY}
forwards:
  - protocol: tcp
    ports:
      0: {ECHO_TCP}
  - protocol: udp
    ports:
      0: {ECHO_UDP}
""")
        return path, domain

    def spawn(self, slot):
        gen = self.gen.get(slot, -1) + 1
        self.gen[slot] = gen
        host = slot // self.args.per_host
        conf, domain = self.client_conf(slot, gen, host)
        log = os.path.join(self.tmp, "clients", f"c{slot}g{gen}.log")
        with open(log, "w") as lf:
            p = subprocess.Popen(["ip", "netns", "exec", self.ns_c[host], os.path.join(self.bins, "opennotr"),
                                  "-c", conf], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=lf,
                                 env=dict(os.environ, RUST_LOG="warn"))
        c = Client(slot, gen, host, domain, p, log)
        os.set_blocking(p.stdout.fileno(), False)
        with self.lock:
            self.slots[slot] = c
            self.all_clients.append(c)
            self.new_clients.append(c)
        os.write(self.wake_w, b"x")
        self.churn_stats["started"] += 1
        return c

    def monitor(self):
        """Reads every client's stdout (one thread for all)."""
        while not self.stop.is_set():
            events = self.sel.select(timeout=0.2)
            t = now()
            for key, _ in events:
                c = key.data
                if c is None:
                    os.read(self.wake_r, 4096)
                    with self.lock:
                        new, self.new_clients = self.new_clients, []
                    for n in new:
                        self.sel.register(n.proc.stdout, selectors.EVENT_READ, n)
                    continue
                try:
                    data = os.read(key.fileobj.fileno(), 65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                with self.lock:
                    if not data:
                        self.sel.unregister(key.fileobj)
                        key.fileobj.close()
                        c.up = False
                        c.exited = t
                        continue
                    c.buf += data
                    *lines, c.buf = c.buf.split(b"\n")
                    for line in lines:
                        c.line(line.decode(errors="replace").strip(), t)

    def live_clients(self):
        with self.lock:
            return [c for c in self.slots.values() if c.live()]

    def registered(self):
        """Live clients whose registration is current."""
        with self.lock:
            return [c for c in self.slots.values() if c.live() and c.up]

    def wait_clients(self, clients, since, bound, what, start=None):
        """Waits until each of `clients` has registered after `since` (or
        exited); returns {slot: time of that registration} and reports
        those more than `bound` after `start` (default `since`)."""
        start = since if start is None else start
        deadline = time.monotonic() + bound + 30
        pending = list(clients)
        times = {}
        while pending and time.monotonic() < deadline:
            with self.lock:
                for c in list(pending):
                    after = [t for t in c.connects if t > since]
                    if after and c.up:
                        times[c.slot] = after[0]
                        pending.remove(c)
                    elif c.exited is not None:
                        pending.remove(c)
            if pending:
                time.sleep(0.05)
        if pending:
            self.violate(f"{what}: {len(pending)} client(s) never reconnected "
                         f"(e.g. c{pending[0].slot}g{pending[0].gen}; log {pending[0].log})")
        late = {s: t - start for s, t in times.items() if t - start > bound}
        if late:
            worst = max(late, key=late.get)
            self.violate(f"{what}: {len(late)} client(s) took longer than {bound:.1f} s to reconnect "
                         f"(worst c{worst}: {late[worst]:.1f} s)")
        return times

    # -------------------------------------------------------------- traffic

    def echo_tcp(self, ns, addr, size):
        s = ns_socket(ns)
        s.settimeout(5)
        try:
            s.connect(addr)
            payload = os.urandom(size)
            s.sendall(payload)
            got = b""
            while len(got) < size:
                d = s.recv(65536)
                if not d:
                    break
                got += d
            if got != payload:
                raise OSError(f"echo of {size} bytes came back as {len(got)} bytes")
        finally:
            s.close()

    def echo_udp(self, ns, addr, bind=None):
        s = ns_socket(ns, kind=socket.SOCK_DGRAM)
        s.settimeout(1)
        try:
            if bind:
                s.bind(bind)
            payload = os.urandom(200)
            for _ in range(3):
                s.sendto(payload, addr)
                try:
                    while True:
                        d = s.recv(2048)
                        if d == payload:
                            return
                except socket.timeout:
                    continue
            raise OSError("no UDP echo after 3 tries")
        finally:
            s.close()

    def probe(self, c, kind):
        if kind == "tcp":
            self.echo_tcp(self.ns_v, (PUBLIC_IP, c.tcp), random.choice((1, 100, 1500, 16384, 65536)))
        elif kind == "udp":
            self.echo_udp(self.ns_v, (PUBLIC_IP, c.udp))
        elif kind == "vip_tcp":
            self.echo_tcp(self.ns_s, (c.vip, ECHO_TCP), random.choice((1, 1500, 16384)))
        else:
            with self.vip_udp_locks[c.slot]:
                self.echo_udp(self.ns_s, (c.vip, ECHO_UDP), bind=("127.0.0.1", VIP_UDP_PEER + c.slot))

    def traffic_worker(self, rate):
        kinds = ("tcp", "udp", "vip_tcp", "vip_udp")
        while not self.stop.is_set():
            if not self.traffic_on.wait(0.2):
                continue
            with self.inflight_cv:
                if not self.traffic_on.is_set():
                    continue
                self.inflight += 1
            try:
                ups = self.registered()
                if not ups:
                    time.sleep(0.1)
                    continue
                c = random.choice(ups)
                kind = random.choice(kinds)
                quiet0, n0 = self.quiet.is_set(), len(c.connects)
                err = None
                try:
                    self.probe(c, kind)
                except OSError as e:
                    err = e
                with self.lock:
                    stayed = quiet0 and self.quiet.is_set() and c.up and c.live() and len(c.connects) == n0
                    if err is None:
                        self.traffic[kind]["ok"] += 1
                    elif stayed:
                        self.traffic[kind]["failed"] += 1
                        if len(self.traffic_fail_samples) < 20:
                            self.traffic_fail_samples.append(f"{round(now(), 1)} {kind} c{c.slot}g{c.gen}: {err}")
                    else:
                        self.traffic[kind]["excused"] += 1
            finally:
                with self.inflight_cv:
                    self.inflight -= 1
                    self.inflight_cv.notify_all()
            time.sleep(random.expovariate(rate))

    def pause_traffic(self):
        self.traffic_on.clear()
        with self.inflight_cv:
            self.inflight_cv.wait_for(lambda: self.inflight == 0, timeout=30)

    # -------------------------------------------------------------- observation

    def nft_elements(self):
        out = run(["nft", "-j", "list", "set", "ip", "opennotr", "exported"], ns=self.ns_s, check=False)
        if not out.strip():
            return None
        elems = set()
        for obj in json.loads(out).get("nftables", []):
            for e in obj.get("set", {}).get("elem", []) or []:
                v = e.get("elem", {}).get("val", e) if isinstance(e, dict) and "elem" in e else e
                parts = v["concat"] if isinstance(v, dict) else v
                elems.add(tuple(str(p) for p in parts))
        return elems

    def nft_shape(self):
        """(tables `ip opennotr`, rules in it, `ip rule`s of our priority,
        routes in our table): the virtual LAN installed exactly once."""
        tables = run(["nft", "list", "tables"], ns=self.ns_s).split("\n").count("table ip opennotr")
        rules = 0
        if tables:
            j = json.loads(run(["nft", "-j", "list", "table", "ip", "opennotr"], ns=self.ns_s))
            rules = sum(1 for o in j.get("nftables", []) if "rule" in o)
        iprules = sum(1 for line in run(["ip", "-n", self.ns_s, "rule", "show"]).splitlines()
                      if line.startswith(ROUTE_TABLE + ":"))
        routes = run(["ip", "-n", self.ns_s, "route", "show", "table", ROUTE_TABLE], check=False)
        return (tables, rules, iprules, len([r for r in routes.splitlines() if r.strip()]))

    def ports_bound(self):
        out = run(["ss", "-Hnlut"], ns=self.ns_s)
        ports = set()
        for line in out.splitlines():
            f = line.split()
            if len(f) < 5:
                continue
            port = int(f[4].rsplit(":", 1)[1])
            if PORT_MIN <= port <= PORT_MAX:
                ports.add((f[0], port))
        return ports

    def etcd_conns(self, pid):
        """opennotrd's connections to etcd (its HTTP client keeps up to two
        idle for 30 s) and the admin API connections of this run's own
        polls (one may still be open while the fds are counted): both are
        left out of the fd comparisons."""
        out = run(["ss", "-Htanp", f"( dport = :{ETCD_PORT} or sport = :{ADMIN_PORT} )"], ns=self.ns_s, check=False)
        return sum(1 for line in out.splitlines() if f"pid={pid}," in line and not line.startswith("LISTEN"))

    def fd_classes(self, pid):
        """opennotrd's descriptors by kind (sockets by protocol, state and
        role): what a mismatch of the fd count is made of."""
        socks = {}
        for proto, flag in (("tcp", "-t"), ("udp", "-u")):
            for line in run(["ss", "-Hanpe", flag], ns=self.ns_s, check=False).splitlines():
                if f"pid={pid}," not in line or " ino:" not in line:
                    continue
                f = line.split()
                state, local, peer = f[0], f[3], f[4]
                ino = line.split(" ino:", 1)[1].split()[0]
                lport = int(local.rsplit(":", 1)[1])
                pport = peer.rsplit(":", 1)[1]
                if pport == str(ETCD_PORT):
                    role = "etcd"
                elif lport == CONTROL_PORT:
                    role = "control/data"
                elif lport in (4398, 4399):
                    role = "vlan"
                elif lport == ADMIN_PORT:
                    role = "admin"
                elif lport == 5353:
                    role = "dns"
                elif PORT_MIN <= lport <= PORT_MAX:
                    role = "public"
                elif local.startswith("100.64."):
                    role = "vip reply"
                else:
                    role = "other"
                socks[ino] = f"{proto} {state} {role}"
        out = {}
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("socket:["):
                    kind = socks.get(target[8:-1], "socket (other)")
                elif target.startswith(("anon_inode:", "pipe:")):
                    kind = target.split("[")[0].rstrip(":") if "[" in target else target
                else:
                    kind = "file"
                out[kind] = out.get(kind, 0) + 1
        except OSError:
            pass
        return out

    def proc_status(self, pid):
        out = {}
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    if k in ("VmRSS", "VmHWM", "Threads"):
                        out[k] = int(v.split()[0])
            out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out["cpu_s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            return None
        return out

    def snapshot(self):
        """The server's state now; fields it cannot read are None."""
        s = {"t": round(now(), 2), "server_gen": self.server_gen}
        st = self.proc_status(self.server.pid) if self.server and self.server.poll() is None else None
        s["fds"] = st and st["fds"]
        s["fds_etcd"] = st and self.etcd_conns(self.server.pid)
        s["rss_kb"] = st and st["VmRSS"]
        s["hwm_kb"] = st and st["VmHWM"]
        s["threads"] = st and st["Threads"]
        s["cpu_s"] = st and round(st["cpu_s"], 2)
        try:
            sessions = json.loads(self.admin("/api/v1/sessions"))
            s["sessions"] = sorted((x["domain"], x["vip"]) for x in sessions)
        except (OSError, ValueError):
            s["sessions"] = None
        try:
            m = self.metrics()
            s["metric_sessions"] = m.get("opennotr_sessions")
            s["metric_fds"] = m.get("process_open_fds")
            streams = {}
            for k, v in m.items():
                if k.startswith("opennotr_forward_streams_open{"):
                    proto = k.split('protocol="', 1)[1].split('"', 1)[0]
                    streams[proto] = streams.get(proto, 0) + int(v)
            s["streams_open"] = streams
            s["udp_flows_open"] = int(m.get("opennotr_udp_flows_open", 0))
        except (OSError, ValueError):
            s["metric_sessions"] = s["metric_fds"] = s["streams_open"] = s["udp_flows_open"] = None
        s["nft"] = self.nft_elements()
        s["ports"] = self.ports_bound()
        try:
            s["etcd"] = self.etcd_records()
        except (OSError, ValueError):
            s["etcd"] = None
        with self.lock:
            s["live"] = len([c for c in self.slots.values() if c.live()])
            s["registered"] = len([c for c in self.slots.values() if c.live() and c.up])
        return s

    def brief(self, s):
        """A snapshot's counts (what the JSON keeps of every sample)."""
        return {
            "t": s["t"], "server_gen": s["server_gen"], "fds": s["fds"], "fds_etcd": s["fds_etcd"],
            "rss_kb": s["rss_kb"],
            "hwm_kb": s["hwm_kb"], "threads": s["threads"], "cpu_s": s["cpu_s"],
            "sessions": None if s["sessions"] is None else len(s["sessions"]),
            "vips": None if s["sessions"] is None else len({v for _, v in s["sessions"]}),
            "ports": len(s["ports"]), "nft": None if s["nft"] is None else len(s["nft"]),
            "etcd": None if s["etcd"] is None else len(s["etcd"]),
            "live_clients": s["live"], "registered": s["registered"],
        }

    def sampler(self):
        every = self.args.sample_every
        while not self.stop.wait(every):
            try:
                with self.obs_lock:
                    s = self.brief(self.snapshot())
            except (Fatal, OSError, ValueError, subprocess.TimeoutExpired) as e:
                s = {"t": round(now(), 2), "error": str(e)}
            s["traffic_ok"] = sum(v["ok"] for v in self.traffic.values())
            self.samples.append(s)

    def expected(self, clients):
        nft = set()
        ports = set()
        for c in clients:
            nft |= {(c.vip, "tcp", str(ECHO_TCP)), (c.vip, "udp", str(ECHO_UDP))}
            ports |= {("tcp", c.tcp), ("udp", c.udp)}
        return {
            "sessions": sorted((c.domain, c.vip) for c in clients),
            "nft": nft, "ports": ports, "etcd": {etcd_key(c.domain) for c in clients},
        }

    def mismatches(self, s, want, fds=None, quiet=False):
        """What differs between snapshot `s` and the state `want`; with
        `quiet`, visitor streams must be closed and each client must have
        exactly one VIP flow (the echo from its fixed peer)."""
        out = []
        if quiet:
            if s["streams_open"] is None:
                out.append("streams: cannot be read")
            else:
                busy = {k: v for k, v in s["streams_open"].items() if v and k != "vip"}
                if busy or s["udp_flows_open"]:
                    out.append(f"visitor streams still open: {busy}, UDP flows {s['udp_flows_open']}")
                if s["streams_open"].get("vip", 0) != len(want["sessions"]):
                    out.append(f"{s['streams_open'].get('vip', 0)} VIP streams open instead of "
                               f"{len(want['sessions'])} (one UDP flow a client)")

        def diff(name, have, need):
            if have is None:
                out.append(f"{name}: cannot be read")
            elif have != need:
                extra = sorted(set(have) - set(need))
                missing = sorted(set(need) - set(have))
                out.append(f"{name}: {len(have)} instead of {len(need)}; extra {extra[:4]}, missing {missing[:4]}")

        diff("sessions", s["sessions"], want["sessions"])
        if s["sessions"] is not None and len({v for _, v in s["sessions"]}) != len(s["sessions"]):
            out.append("VIPs: two sessions share one")
        if s["metric_sessions"] is not None and s["metric_sessions"] != len(want["sessions"]):
            out.append(f"opennotr_sessions {s['metric_sessions']:.0f} instead of {len(want['sessions'])}")
        diff("nft exported elements", s["nft"], want["nft"])
        diff("public ports bound", s["ports"], want["ports"])
        if s["etcd"] is None:
            out.append("etcd: cannot be read")
        else:
            diff("etcd keys", set(s["etcd"]), want["etcd"])
            hosts = {h for h, _ in s["etcd"].values()}
            if hosts - {PUBLIC_IP}:
                out.append(f"etcd records with hosts {sorted(hosts - {PUBLIC_IP})}")
            leases = {lease for _, lease in s["etcd"].values()}
            if len(leases) > 1:
                out.append(f"etcd records on {len(leases)} leases")
        if fds is not None and (s["fds"] is None or s["fds"] - s["fds_etcd"] != fds):
            out.append(
                f"server fds {s['fds']} ({s['fds_etcd']} to etcd or the admin API) instead of {fds} (besides those)"
            )
        return out

    def settle(self, want_fn, fds=None, bound=30.0, quiet=False):
        """Polls until the server's state equals want_fn()'s (and the fds
        `fds`); the last snapshot and its mismatches (empty if it settled)."""
        deadline = time.monotonic() + bound
        t0 = now()
        first = None
        refreshed = time.monotonic()
        while True:
            if quiet and time.monotonic() - refreshed > 10:
                # A slow settle must not outlast the VIP flows (30 s idle).
                self.refresh_vip_flows("settling")
                refreshed = time.monotonic()
            with self.obs_lock:
                s = self.snapshot()
            bad = self.mismatches(s, want_fn(), fds, quiet)
            if not bad:
                if quiet and first and now() - t0 > 5:
                    say(f"settled after {now() - t0:.1f} s; at first: {first}")
                return s, [], now() - t0
            first = first or bad
            if self.args.verbose and now() - t0 > 3:
                say(f"  settling: {bad}")
                if self.first_baseline and self.server.poll() is None:
                    was, classes = self.first_baseline["fd_classes"], self.fd_classes(self.server.pid)
                    say("  fds by kind against the first steady point: "
                        + str({k: classes.get(k, 0) - was.get(k, 0) for k in set(was) | set(classes)
                               if classes.get(k, 0) != was.get(k, 0)}))
            if time.monotonic() > deadline:
                if first != bad:
                    say(f"not settled after {bound:.0f} s; at first: {first}")
                return s, bad, now() - t0
            time.sleep(0.25)

    # -------------------------------------------------------------- churn

    def churn_for(self, secs):
        """Clients leave and others come, for `secs`; then every slot gets
        a client again."""
        end = time.monotonic() + secs
        rate = self.args.churn_rate
        leaving = []  # (client, restart no earlier than)
        next_kill = time.monotonic()
        while time.monotonic() < end:
            t = time.monotonic()
            if t >= next_kill:
                next_kill = t + random.expovariate(rate)
                cands = [c for c in self.registered() if c.slot not in self.stable]
                if cands:
                    c = random.choice(cands)
                    self.leave(c, random.random() < 0.2)
                    leaving.append((c, t + random.uniform(0.2, 2.0)))
            for c, at in list(leaving):
                if c.proc.poll() is not None and time.monotonic() >= at:
                    c.proc.wait()
                    leaving.remove((c, at))
                    self.spawn(c.slot)
                elif time.monotonic() - at > 10 and c.proc.poll() is None:
                    self.churn_stats["slow_exit"] += 1
                    self.violate(f"c{c.slot}g{c.gen} still running 10 s after SIGTERM")
                    c.proc.kill()
            time.sleep(0.02)
        for c, _ in leaving:
            try:
                c.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.violate(f"c{c.slot}g{c.gen} still running 10 s after SIGTERM")
                c.proc.kill()
                c.proc.wait()
            self.spawn(c.slot)

    def leave(self, c, kill):
        with self.lock:
            c.stopping = True
            c.up = False
        c.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.churn_stats["sigkill" if kill else "sigterm"] += 1

    def fill_slots(self):
        if self.server.poll() is not None:
            raise Fatal(f"opennotrd exited ({self.server.returncode}); see {self.server_log}")
        for slot in range(self.args.clients):
            c = self.slots.get(slot)
            if c is not None and c.exited is not None and not c.stopping:
                self.violate(f"c{slot}g{c.gen} exited by itself ({c.proc.wait()}); log {c.log}")
            if c is None or c.stopping or c.exited is not None:
                if c is not None and c.proc.poll() is None:
                    c.proc.kill()
                if c is not None:
                    c.proc.wait()
                self.spawn(slot)

    # -------------------------------------------------------------- steady points

    def refresh_vip_flows(self, label):
        """One UDP echo at every client's VIP from its slot's fixed peer:
        each then has exactly one VIP flow."""
        for c in self.registered():
            try:
                self.probe(c, "vip_udp")
            except OSError as e:
                self.violate(f"{label}: no UDP echo at c{c.slot}g{c.gen}'s VIP: {e}")

    def all_up(self, bound):
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            if len(self.registered()) == self.args.clients:
                return True
            time.sleep(0.05)
        down = [c for c in self.live_clients() if not c.up]
        self.violate(f"{len(down)} client(s) not registered after {bound:.0f} s "
                     + (f"(e.g. c{down[0].slot}g{down[0].gen}; log {down[0].log})" if down else ""))
        return False

    def stable_fds(self, s, bound=10.0):
        """The snapshot to take the fd baseline from: `s`, or a later one,
        once two in a row 0.5 s apart agree on the fds (those to etcd and
        the admin API aside). Every later point is held to the baseline, so
        a descriptor that happened to be open for a moment must not be in
        it."""
        deadline = time.monotonic() + bound
        while time.monotonic() < deadline:
            time.sleep(0.5)
            with self.obs_lock:
                s2 = self.snapshot()
            if None in (s["fds"], s2["fds"]) or s2["fds"] - s2["fds_etcd"] == s["fds"] - s["fds_etcd"]:
                return s2
            say(f"baseline fds not stable yet: {s['fds'] - s['fds_etcd']} then {s2['fds'] - s2['fds_etcd']}")
            s = s2
        return s

    def steady(self, label, new_baseline=False):
        """All slots registered, no traffic in flight: the server's state
        must be exactly what the clients hold, and its fds (those to etcd
        aside) those of the first steady point."""
        self.fill_slots()
        self.all_up(RECONNECT_MAX_DELAY + HANDSHAKE_TIMEOUT + 30)
        self.pause_traffic()
        self.refresh_vip_flows(label)
        base_fds = None if self.first_baseline is None else self.first_baseline["fds_other"]
        s, bad, took = self.settle(lambda: self.expected(self.registered()), fds=base_fds, quiet=True)
        if base_fds is None and not bad:
            s = self.stable_fds(s)
        classes = self.fd_classes(self.server.pid)
        if bad and self.first_baseline:
            was = self.first_baseline["fd_classes"]
            diff = {k: classes.get(k, 0) - was.get(k, 0) for k in set(was) | set(classes)
                    if classes.get(k, 0) != was.get(k, 0)}
            say(f"{label}: server fds by kind, against the first steady point: {diff}")
        shape = self.nft_shape()
        if self.nft_shape0 is None:
            self.nft_shape0 = shape
        elif shape != self.nft_shape0:
            bad.append(f"nftables (tables, rules, ip rules, routes) {shape} instead of {self.nft_shape0}")
        stable = {}
        for slot in sorted(self.stable):
            c = self.slots[slot]
            st = self.proc_status(c.proc.pid)
            if st:
                stable[f"c{slot}"] = {"fds": st["fds"], "rss_kb": st["VmRSS"], "pid": c.proc.pid}
        b = self.brief(s)
        b["fds_etcd"] = s["fds_etcd"]
        b["fds_other"] = None if s["fds"] is None else s["fds"] - s["fds_etcd"]
        b.update({"label": label, "settle_s": round(took, 2), "nft_shape": shape, "stable_clients": stable,
                  "fd_classes": classes, "mismatches": bad})
        for m in bad:
            self.violate(f"{label}: {m}")
        if self.first_baseline is not None:
            self.check_stable_clients(label, stable)
        if new_baseline or self.baseline is None:
            # The server process's memory is measured from here.
            self.baseline = b
            if self.first_baseline is None:
                self.first_baseline = b
        self.steadies.append(b)
        say(f"steady [{label}]: {b['sessions']} sessions, {b['vips']} VIPs, {b['ports']} ports, {b['nft']} nft "
            f"elements, {b['etcd']} etcd keys, {b['fds']} fds, RSS {b['rss_kb']} kB (HWM {b['hwm_kb']} kB)"
            + (f", {len(bad)} mismatch(es)" if bad else ", exact"))
        self.traffic_on.set()
        return b

    def check_stable_clients(self, label, now_):
        base = self.first_baseline["stable_clients"]
        for name, v in now_.items():
            b = base.get(name)
            if b and b["pid"] == v["pid"] and v["fds"] != b["fds"]:
                self.violate(f"{label}: client {name} has {v['fds']} fds, {b['fds']} at the first steady point")

    # -------------------------------------------------------------- faults

    def fault(self, name):
        say(f"fault: {name}")
        self.quiet.clear()
        f = {"name": name, "t": round(now(), 1)}
        self.faults.append(f)
        return f

    def fault_done(self, f):
        self.quiet.set()
        f["took_s"] = round(now() - f["t"], 1)
        say(f"fault done: {f['name']} ({json.dumps({k: v for k, v in f.items() if k not in ('name', 't')})})")

    def fault_kill_clients(self):
        """kill -9 of clients: their connection ends, the server must free
        everything they held at once (at the latest within keepaliveTimeout)."""
        f = self.fault("kill -9 of clients")
        cands = [c for c in self.registered() if c.slot not in self.stable]
        victims = random.sample(cands, max(1, len(cands) // 20))
        f["clients"] = len(victims)
        for c in victims:
            self.leave(c, True)
        t0 = now()
        bound = KEEPALIVE_TIMEOUT + KEEPALIVE_INTERVAL + SLACK
        s, bad, took = self.settle(lambda: self.expected(self.registered()), bound=bound)
        f["freed_s"] = round(now() - t0, 2)
        f["bound_s"] = bound
        for m in bad:
            self.violate(f"{f['name']}: not freed within {bound:.0f} s: {m}")
        for c in victims:
            c.proc.wait()
            self.spawn(c.slot)
        self.fault_done(f)

    def fault_etcd(self, wipe):
        """etcd stopped (and its data lost if `wipe`) while clients come and
        go; once back, its keys must be exactly the live clients' again."""
        f = self.fault("etcd stopped, data wiped, restarted" if wipe else "etcd stopped and restarted")
        before = self.etcd_records()
        self.etcd_stop()
        if wipe:
            shutil.rmtree(os.path.join(self.tmp, "etcd-data"))
        # Clients leave and come while etcd is down.
        cands = [c for c in self.registered() if c.slot not in self.stable]
        movers = random.sample(cands, max(1, len(cands) // 10))
        for c in movers:
            self.leave(c, False)
        for c in movers:
            c.proc.wait(timeout=10)
            self.spawn(c.slot)
        self.all_up(RECONNECT_MAX_DELAY + HANDSHAKE_TIMEOUT + 30)
        f["clients_changed"] = len(movers)
        down_for = max(0.0, LEASE_TTL / 2 - (now() - f["t"]))
        time.sleep(down_for)  # an outage of a stated length (not a synchronisation)
        f["down_s"] = round(now() - f["t"], 1)
        t_up = self.etcd_start()
        bound = ETCD_RETRY_MAX + ETCD_REQUEST_TIMEOUT + SLACK
        s, bad, took = self.settle(lambda: self.expected(self.registered()), bound=bound)
        f["republished_s"] = round(now() - t_up, 2)
        f["bound_s"] = bound
        f["keys_before"] = len(before)
        f["keys_after"] = len(s["etcd"] or {})
        leases_before = {lease for _, lease in before.values()}
        leases_after = {lease for _, lease in (s["etcd"] or {}).values()}
        f["lease_kept"] = leases_before == leases_after
        for m in bad:
            self.violate(f"{f['name']}: {took:.1f} s after etcd is back: {m}")
        self.fault_done(f)

    def fault_kill_server(self):
        """kill -9 of opennotrd, clients leaving while it is down, restart:
        every client reconnects within the cap; the virtual LAN's rules are
        not duplicated; no etcd key stays on the dead server's lease."""
        f = self.fault("kill -9 of opennotrd, restart")
        old = self.etcd_records()
        old_leases = {lease for _, lease in old.values()}
        clients = self.registered()
        self.server.kill()
        self.server.wait()
        t_kill = now()
        cands = [c for c in clients if c.slot not in self.stable]
        leavers = random.sample(cands, max(1, len(cands) // 10))
        for c in leavers:
            self.leave(c, False)
        for c in leavers:
            c.proc.wait(timeout=10)
        stayers = [c for c in clients if c not in leavers]
        time.sleep(1.0)  # a stated outage (not a synchronisation)
        t_ready = self.server_start()
        f["down_s"] = round(t_ready - t_kill, 2)
        bound = RECONNECT_MAX_DELAY + HANDSHAKE_TIMEOUT
        # Clients may register before the readiness line is seen.
        times = self.wait_clients(stayers, t_kill, bound, f["name"], start=t_ready)
        f["clients"] = len(stayers)
        f["reconnect_bound_s"] = bound
        f.update(stats("reconnect_after_ready", {k: max(0.0, t - t_ready) for k, t in times.items()}))
        f.update(stats("reconnect_after_kill", {k: t - t_kill for k, t in times.items()}))
        for c in leavers:
            self.spawn(c.slot)
        self.all_up(bound + 30)
        s, bad, took = self.settle(lambda: self.expected(self.registered()), bound=ETCD_RETRY_MAX + SLACK)
        for m in bad:
            self.violate(f"{f['name']}: {m}")
        stale = [k for k, (_, lease) in (s["etcd"] or {}).items() if lease in old_leases]
        f["keys_on_dead_lease"] = len(stale)
        if stale:
            self.violate(f"{f['name']}: {len(stale)} etcd key(s) still on the dead server's lease, e.g. {stale[0]}")
        shape = self.nft_shape()
        f["nft_shape"] = shape
        if shape != self.nft_shape0:
            self.violate(f"{f['name']}: nftables (tables, rules, ip rules, routes) {shape}, "
                         f"{self.nft_shape0} before")
        self.fault_done(f)

    def fault_cut(self):
        """The client hosts' links cut; clients killed meanwhile (the server
        cannot hear them go); the server drops every session within
        keepaliveTimeout and frees all; links restored: every surviving
        client reconnects within the cap."""
        f = self.fault("client/server link cut, clients killed meanwhile, restored")
        clients = self.registered()
        self.set_links(False)
        t_cut = now()
        cands = [c for c in clients if c.slot not in self.stable]
        dead = random.sample(cands, max(1, len(cands) // 10))
        for c in dead:
            self.leave(c, True)
        stayers = [c for c in clients if c not in dead]
        bound = KEEPALIVE_TIMEOUT + KEEPALIVE_INTERVAL + SLACK
        s, bad, took = self.settle(lambda: self.expected([]), bound=bound)
        f["clients"] = len(clients)
        f["killed_during_cut"] = len(dead)
        f["server_dropped_all_s"] = round(now() - t_cut, 2)
        f["drop_bound_s"] = bound
        for m in bad:
            self.violate(f"{f['name']}: {bound:.0f} s into the cut: {m}")
        t_up = now()  # before: the first links are up before the last
        self.set_links(True)
        f["cut_s"] = round(t_up - t_cut, 2)
        rbound = RECONNECT_MAX_DELAY + HANDSHAKE_TIMEOUT
        times = self.wait_clients(stayers, t_cut, rbound, f["name"], start=t_up)
        f["reconnect_bound_s"] = rbound
        f.update(stats("reconnect_after_restore", {k: max(0.0, t - t_up) for k, t in times.items()}))
        for c in dead:
            c.proc.wait()
            self.spawn(c.slot)
        self.fault_done(f)

    # -------------------------------------------------------------- the run

    def start(self):
        os.makedirs(os.path.join(self.tmp, "clients"))
        self.make_net()
        for h, ns in enumerate(self.ns_c):
            p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-u", "-c", ECHO, str(ECHO_TCP),
                                  str(ECHO_UDP)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
            self.echoes.append(p)
            if p.stdout.readline().strip() != "ready":
                raise Fatal(f"echo service of client host {h} did not start")
        self.etcd_start()
        self.write_server_conf()
        self.server_start()
        for fn in (self.monitor, self.sampler):
            t = threading.Thread(target=fn, daemon=True)
            t.start()
            self.threads.append(t)
        rate = self.args.traffic_rate / self.args.traffic_threads
        for _ in range(self.args.traffic_threads):
            t = threading.Thread(target=self.traffic_worker, args=(rate,), daemon=True)
            t.start()
            self.threads.append(t)
        say(f"starting {self.args.clients} clients on {self.hosts} client host(s)")
        t0 = now()
        for slot in range(self.args.clients):
            self.spawn(slot)
            time.sleep(0.01)  # spreads the start a little (not a synchronisation)
        self.all_up(60 + self.args.clients * 0.2)
        say(f"all {self.args.clients} clients registered after {now() - t0:.1f} s")
        self.quiet.set()
        self.traffic_on.set()

    def main_loop(self):
        d = self.args.duration
        end = self.started_at + d
        faults = [self.fault_kill_clients, lambda: self.fault_etcd(False), lambda: self.fault_etcd(True),
                  self.fault_kill_server, self.fault_cut]
        # Warm-up, then the faults spread over the run, each between two
        # steady points, with churn in between.
        # Warm-up (the server's memory grows to its working set: buffers of
        # the flows and streams the traffic keeps open), the baseline, then
        # the faults spread over the rest, each between two steady points,
        # with churn in between.
        warm = self.args.warmup
        rest = d - warm
        marks = [self.started_at + warm + rest * (i + 0.5) / (len(faults) + 0.5) for i in range(len(faults))]
        self.churn_for(max(2.0, self.started_at + warm - now()))
        self.steady("baseline")
        for i, fault in enumerate(faults):
            self.churn_for(max(self.args.min_window, marks[i] - now()))
            before = self.steady(f"before fault {i + 1}")
            if fault == self.fault_kill_server:
                # The first server's memory, warm, after most of the churn:
                # against its baseline, and the reference for the restarted
                # server's.
                self.check_rss(before, self.baseline, "the first server")
                self.rss_reference = before
            fault()
            # The restarted server's fds must equal the first server's.
            self.steady(f"after fault {i + 1}", new_baseline=fault == self.fault_kill_server)
        self.churn_for(max(self.args.min_window, end - now()))
        final = self.steady("end")
        self.check_rss(final, getattr(self, "rss_reference", self.baseline), "the server at the end")
        return final

    def check_rss(self, now_, ref, what):
        """RSS within RSS_FACTOR x + RSS_SLACK_KB of a warm reference."""
        if now_["rss_kb"] and ref["rss_kb"]:
            limit = ref["rss_kb"] * RSS_FACTOR + RSS_SLACK_KB
            now_["rss_limit_kb"] = round(limit)
            if now_["rss_kb"] > limit:
                self.violate(f"RSS of {what}: {now_['rss_kb']} kB at '{now_['label']}', {ref['rss_kb']} kB at "
                             f"'{ref['label']}' (limit {limit:.0f} kB)")

    def teardown(self):
        self.quiet.clear()  # echoes cut short from here on are not failures
        self.stop.set()
        self.traffic_on.set()
        for c in self.all_clients:
            c.stopping = True
            if c.proc.poll() is None:
                c.proc.kill()
        for c in self.all_clients:
            try:
                c.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.server and self.server.poll() is None:
            # SIGTERM: opennotrd removes its nftables table, rule and routes.
            self.server.terminate()
            try:
                self.server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        for p in [self.etcd] + self.echoes:
            if p and p.poll() is None:
                p.kill()
                p.wait()
        for ns in self.made_ns:
            run(["ip", "netns", "del", ns], check=False)


def stats(name, times):
    if not times:
        return {}
    v = sorted(times.values())
    return {f"{name}_p50_s": round(v[len(v) // 2], 2), f"{name}_p95_s": round(v[min(len(v) - 1, int(len(v) * 0.95))], 2),
            f"{name}_max_s": round(v[-1], 2)}


def machine():
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "mem_mib": mem, "kernel": os.uname().release,
            "load_before": "%.2f" % os.getloadavg()[0]}


def preflight(args):
    if os.geteuid() != 0:
        print("skipped: the soak needs root (network namespaces, nftables)")
        sys.exit(0)
    missing = [t for t in ("ip", "nft", "ss") if not shutil.which(t)]
    if not shutil.which(args.etcd) and not os.path.exists(args.etcd):
        missing.append("etcd (Debian: etcd-server)")
    for b in ("opennotrd", "opennotr"):
        if not os.path.exists(os.path.join(args.bin_dir, b)):
            missing.append(f"{args.bin_dir}/{b} (cargo build --bins)")
    if missing:
        print(f"soak: missing: {', '.join(missing)}", file=sys.stderr)
        sys.exit(2)


def report(result):
    """The generated part of docs/soak.md."""
    a = result["args"]
    m = result["machine"]
    bins = a["bin_dir"]
    if bins.startswith(ROOT + os.sep):
        bins = os.path.relpath(bins, ROOT)

    def words(k):
        return k[:-2].replace("_", " ") + " (s)" if k.endswith("_s") else k.replace("_", " ")

    lines = ["## Results", "",
             f"Produced by `{result['cmd']}` on {result['date']} ({m['cores']} cores, {m['cpu']}, "
             f"{m['mem_mib']} MiB, kernel {m['kernel']}, load average {m['load_before']} at the start; "
             f"binaries from `{bins}`). {a['clients']} clients, {a['duration']} s, "
             f"churn {a['churn_rate']:.2f} clients/s, traffic {a['traffic_rate']:.0f} echoes/s; "
             f"run time {result['elapsed_s']:.0f} s.", "",
             "Steady points (all slots registered, traffic paused); fds, RSS and HWM are opennotrd's:", "",
             "| point | t (s) | server | sessions | VIPs | public ports | nft elements | etcd keys | fds (to etcd) | "
             "RSS (kB) | HWM (kB) | settled in (s) | exact |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in result["steady"]:
        lines.append(f"| {s['label']} | {s['t']:.0f} | #{s['server_gen']} | {s['sessions']} | {s['vips']} | "
                     f"{s['ports']} | {s['nft']} | {s['etcd']} | {s['fds']} ({s['fds_etcd']}) | {s['rss_kb']} | {s['hwm_kb']} | "
                     f"{s['settle_s']} | {'yes' if not s['mismatches'] else 'no'} |")
    for s in result["steady"]:
        if "rss_limit_kb" in s:
            lines.append(f"\nMemory at '{s['label']}': {s['rss_kb']} kB, limit {s['rss_limit_kb']} kB "
                         f"({RSS_FACTOR}x + {RSS_SLACK_KB // 1024} MiB of the warm reference).")
    first, last = result["steady"][0] if result["steady"] else {}, result["steady"][-1] if result["steady"] else {}
    kept = [n for n, v in last.get("stable_clients", {}).items()
            if first.get("stable_clients", {}).get(n, {}).get("pid") == v["pid"]]
    if kept:
        fds = sorted({s["stable_clients"][n]["fds"] for s in result["steady"] for n in kept if n in s["stable_clients"]})
        rss = [s["stable_clients"][n]["rss_kb"] for s in result["steady"] for n in kept if n in s["stable_clients"]]
        lines.append(f"\nThe {len(kept)} never-churned clients (the same processes throughout, through every fault): "
                     f"fds {'/'.join(map(str, fds))} at every steady point; RSS {min(rss)}–{max(rss)} kB.")
    lines += ["", "Faults:", "", "| fault | what was measured | bound |", "|---|---|---|"]
    for f in result["faults"]:
        keys = [k for k in f if k not in ("name", "t", "took_s") and not k.endswith("bound_s")]
        what = ", ".join(f"{words(k)} {f[k]}" for k in keys)
        bounds = ", ".join(f"{words(k)} {f[k]}" for k in f if k.endswith("bound_s"))
        lines.append(f"| {f['name']} (at {f['t']:.0f} s, {f['took_s']} s) | {what} | {bounds} |")
    t = result["traffic"]
    lines += ["", "Traffic (echoes; *failed*: to a client connected before and after, no fault in progress; "
              "*excused*: the client left, reconnected or a fault was on):", "",
              "| path | ok | failed | excused |", "|---|---|---|---|"]
    for k, v in t.items():
        lines.append(f"| {k} | {v['ok']} | {v['failed']} | {v['excused']} |")
    c = result["churn"]
    lines += ["", f"Churn: {c['started']} client processes started, {c['sigterm']} stopped with SIGTERM, "
              f"{c['sigkill']} with SIGKILL (besides the faults).", ""]
    v = result["violations"]
    lines.append("Violations: none." if not v else "Violations:\n\n" + "\n".join(f"- {x['t']} s: {x['what']}" for x in v))
    return "\n".join(lines) + "\n"


def update_doc(section):
    text = open(DOC).read() if os.path.exists(DOC) else "# Faults and soak\n"
    head, sep, _ = text.partition("\n## Results\n")
    if not sep:
        head = text.rstrip("\n") + "\n"
    with open(DOC, "w") as f:
        f.write(head.rstrip("\n") + "\n\n" + section)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--duration", type=float, default=600, help="seconds, faults included")
    ap.add_argument("--short", action="store_true", help="CI: 20 clients, 75 s, every fault once")
    ap.add_argument("--per-host", type=int, default=25, help="clients per client host (namespace)")
    ap.add_argument("--churn-rate", type=float, default=0, help="clients replaced per second (default clients/30)")
    ap.add_argument("--traffic-rate", type=float, default=40, help="echoes per second, all threads")
    ap.add_argument("--traffic-threads", type=int, default=4)
    ap.add_argument("--sample-every", type=float, default=5)
    ap.add_argument("--min-window", type=float, default=5, help="least churn between two steady points (s)")
    ap.add_argument("--warmup", type=float, default=0, help="seconds before the baseline (default: a quarter)")
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "debug"))
    ap.add_argument("--etcd", default="/usr/bin/etcd" if os.path.exists("/usr/bin/etcd") else "etcd")
    ap.add_argument("--verbose", action="store_true", help="print every mismatch while the state settles")
    ap.add_argument("--report", action="store_true", help="write the Results section of docs/soak.md")
    ap.add_argument("--report-from", metavar="JSON", help="rewrite docs/soak.md's Results from a saved run")
    args = ap.parse_args()
    if args.report_from:
        with open(args.report_from) as f:
            update_doc(report(json.load(f)))
        return 0
    if args.short:
        defaults = ap.parse_args([])
        if args.clients == defaults.clients:
            args.clients = 20
        if args.duration == defaults.duration:
            args.duration = 75
        if args.sample_every == defaults.sample_every:
            args.sample_every = 2
        if args.min_window == defaults.min_window:
            args.min_window = 3
    if not args.warmup:
        args.warmup = args.duration / 4
    if not args.churn_rate:
        args.churn_rate = max(0.5, args.clients / 30)
    args.bin_dir = os.path.abspath(args.bin_dir)
    preflight(args)
    cmd = "python3 bench/soak.py " + " ".join(sys.argv[1:])
    result = {"cmd": cmd.strip(), "date": str(datetime.date.today()), "machine": machine(),
              "args": vars(args), "timing": {
                  "keepaliveInterval": KEEPALIVE_INTERVAL, "keepaliveTimeout": KEEPALIVE_TIMEOUT,
                  "handshakeTimeout": HANDSHAKE_TIMEOUT, "reconnectMaxDelay": RECONNECT_MAX_DELAY,
                  "leaseTtl": LEASE_TTL}}

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    tmp = tempfile.mkdtemp(prefix="opennotr-soak-")
    soak = Soak(args, tmp)
    error = None
    try:
        soak.start()
        soak.started_at = now()
        soak.main_loop()
    except (Fatal, subprocess.TimeoutExpired, OSError) as e:
        error = str(e)
        say(f"FATAL: {e}")
    except KeyboardInterrupt:
        error = "interrupted"
        say("interrupted")
    finally:
        try:
            m = soak.metrics() if soak.server and soak.server.poll() is None else {}
        except (OSError, ValueError):
            m = {}
        result["server_counters"] = {k: v for k, v in m.items() if k.startswith(
            ("opennotr_handshakes_total", "opennotr_refusals_total", "opennotr_auth_failures_total",
             "opennotr_control_connections_refused_total", "opennotr_fd_reserve_refusals_total"))}
        soak.teardown()
    refusals = {}
    slow_first = []
    for c in soak.all_clients:
        for _, line in c.refusals:
            code = line.split("(", 1)[1].split(")", 1)[0] if "(" in line else line
            refusals[code] = refusals.get(code, 0) + 1
        for b in c.bad_forwards:
            soak.violate(f"c{c.slot}g{c.gen}: {b}")
    for code in ("pool_exhausted", "domain_taken", "too_many_clients"):
        if refusals.get(code):
            soak.violate(f"{refusals[code]} client registration(s) refused with {code}")
    for k, v in soak.traffic.items():
        if k in ("tcp", "vip_tcp") and v["failed"]:
            soak.violate(f"{v['failed']} {k} echo(es) failed to clients that stayed connected: "
                         f"{soak.traffic_fail_samples[:3]}")
        if k in ("udp", "vip_udp") and v["failed"] > max(1, 0.01 * (v["ok"] + v["failed"])):
            soak.violate(f"{v['failed']} of {v['ok'] + v['failed']} {k} echoes lost (3 tries each) "
                         f"to clients that stayed connected")
    if error:
        soak.violations.append({"t": round(now(), 1), "what": f"the run stopped: {error}"})
    result.update({"elapsed_s": round(now(), 1), "samples": soak.samples, "steady": soak.steadies,
                   "faults": soak.faults, "traffic": soak.traffic, "traffic_failures": soak.traffic_fail_samples,
                   "churn": soak.churn_stats, "client_refusals": refusals, "violations": soak.violations})
    os.makedirs(RESULTS, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = os.path.join(RESULTS, f"soak-{stamp}.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=1, default=sorted)
    text = report(result)
    print("\n" + text)
    print(f"result: {out}")
    if soak.violations:
        keep = os.path.join(RESULTS, f"soak-{stamp}-logs")
        shutil.copytree(tmp, keep, ignore=shutil.ignore_patterns("etcd-data", "*.yaml"))
        print(f"logs kept in {keep}")
    shutil.rmtree(tmp, ignore_errors=True)
    if args.report:
        update_doc(text)
    if soak.violations:
        print(f"soak FAILED: {len(soak.violations)} violation(s); the first: {soak.violations[0]['what']}",
              file=sys.stderr)
        return 1
    print(f"soak passed in {now():.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
