# syntax=docker/dockerfile:1
#
# opennotrd (and the opennotr client) in a small Debian image.
#
#   docker build -t opennotr .
#   docker run -d --name opennotrd \
#       -v "$PWD/notrd.yaml:/etc/opennotr/notrd.yaml:ro" \
#       -p 10100:10100 -p 10000-10099:10000-10099 -p 20000-20099:20000-20099/udp \
#       --stop-timeout 20 opennotr
#
# (--stop-timeout above server.shutdownGrace, 10 s, so that open connections
# drain and opennotrd cleans up before Docker's SIGKILL.)
#
# Capabilities (docs/packaging.md has the table). The image runs as the
# unprivileged user `opennotr`, which is all opennotrd needs for the tunnel,
# the tcp/udp plugins, the gateway, DNS and etcd publishing. Docker lets a
# non-root process bind ports below 1024 inside its own network namespace,
# so CAP_NET_BIND_SERVICE matters only with --network host.
#
# The virtual LAN (server.tcplisten, docs/virtual-lan.md) needs CAP_NET_ADMIN
# in opennotrd *and* in the `nft` and `ip` commands it runs: for
# IP_TRANSPARENT on its sockets, the nftables table and the policy route.
# Docker gives a non-root user added capabilities in the bounding set only,
# never as effective or ambient ones, so for the virtual LAN run the
# container as root with the capability added:
#
#   docker run --user 0:0 --cap-add NET_ADMIN ...
#
# (file capabilities on the binary are no way round: they would not reach
# the nft and ip children, and the binary could no longer be started at all
# in a container without NET_ADMIN). Without it opennotrd logs one warning,
# `virtual LAN off ...` with the reason, and runs everything else. The rules
# live in the container's network namespace: with --network host they serve
# programs on the host, on a bridge network only containers that share
# opennotrd's namespace (--network container:opennotrd).

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
# The workspace's release profile keeps line tables for profiling on a
# developer's machine; an image has no use for them. Symbol names stay, so a
# panic's backtrace still names its functions.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo
# The cache mounts keep crates.io downloads and compiled dependencies between
# builds; target/ is a cache, so the binaries are copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p opennotr \
 && install -D -m 0755 -t /out target/release/opennotrd target/release/opennotr

FROM ${RUNTIME_IMAGE}
# nftables and iproute2: the `nft` and `ip` commands of the virtual LAN.
# ca-certificates: ACME talks HTTPS to the CA and trusts the system roots.
# Not pinned: bookworm's security updates replace the versions a pin names.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates iproute2 nftables \
 && rm -rf /var/lib/apt/lists/*
# A fixed UID/GID so volume and config file ownership can be set on the host
# (chown 10100 ...), and numeric for runtimes that check runAsNonRoot.
RUN groupadd --system --gid 10100 opennotr \
 && useradd --system --uid 10100 --gid opennotr --home-dir /var/lib/opennotr \
        --shell /usr/sbin/nologin opennotr \
 && install -d -o opennotr -g opennotr -m 0750 /var/lib/opennotr \
 && install -d -m 0755 /etc/opennotr
COPY --from=builder /out/opennotrd /out/opennotr /usr/local/bin/
# Examples only: no configuration is built in, since it would carry a
# well-known authKey. Mount your own at /etc/opennotr/notrd.yaml.
COPY etc/ /usr/share/doc/opennotr/examples/
# Relative paths in the config (plugin.https.acme.storage, certDir) resolve
# here, in the directory the user owns (a volume in deploy/docker).
WORKDIR /var/lib/opennotr
USER 10100:10100
# The control port and the tcp/udp port ranges of etc/notrd.yaml, as
# documentation: publish what your config uses with -p (-P would map all
# 20,000 ports). The transparent listeners (4398, 4399) only ever receive
# diverted local traffic and must not be published.
EXPOSE 10100/tcp 10000-20000/tcp 20000-30000/udp
ENTRYPOINT ["opennotrd"]
CMD ["-c", "/etc/opennotr/notrd.yaml"]
