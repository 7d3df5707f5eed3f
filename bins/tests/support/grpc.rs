//! gRPC test programs, in Python with Debian's `python3-grpcio`: an echo
//! service and a client that checks it. Standard library only, so that
//! both test harnesses compile this one file: `bins/tests/support` (the
//! binaries' tests, e.g. gRPC through nginx) and the `opennotr-tests`
//! crate (`tests/src/lib.rs`, which exports it).

/// A Python interpreter that has `grpc` (Debian's `python3-grpcio`, which CI
/// installs). The first `python3` on PATH may be another interpreter (a
/// pyenv shim) without it, so `/usr/bin/python3` is tried too. Panics with
/// what to install when none has it: a gRPC test must not pass by skipping.
pub fn python_with_grpc() -> &'static str {
    static FOUND: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    FOUND.get_or_init(|| super::tools::python_with("grpc"))
}

/// A gRPC echo service (`test.Echo`: `Unary` echoes with an `echo:` prefix,
/// `Stream` sends N large messages, `Fail` answers NOT_FOUND with details
/// in the trailers), on 127.0.0.1 and a free port, which it prints first.
/// It stops when its stdin closes, or, with the argument `forever`, when it
/// is killed (for a child without stdin).
pub const GRPC_ECHO_SERVER: &str = r#"
import sys
from concurrent import futures
import grpc

def unary(req, ctx):
    return b"echo:" + req

def stream(req, ctx):
    for i in range(int(req.decode())):
        yield (b"%d:" % i) + b"s" * 100000

def fail(req, ctx):
    ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + req.decode())

opts = [("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20)]
handlers = grpc.method_handlers_generic_handler("test.Echo", {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "Stream": grpc.unary_stream_rpc_method_handler(stream),
    "Fail": grpc.unary_unary_rpc_method_handler(fail),
})
server = grpc.server(futures.ThreadPoolExecutor(4), options=opts)
server.add_generic_rpc_handlers((handlers,))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
if sys.argv[1:] == ["forever"]:
    server.wait_for_termination()
else:
    sys.stdin.read()
    server.stop(0)
"#;

/// A client of [`GRPC_ECHO_SERVER`] through a gateway on
/// `127.0.0.1:<port>`: `<port> <domain>` for cleartext HTTP/2 (h2c),
/// `<port> <domain> <ca.pem>` for TLS. Calls `Unary` (small and 3 MiB),
/// `Stream` (20 messages of 100 kB) and `Fail` (status and details from
/// the trailers); prints `grpc ok`.
pub const GRPC_CLIENT: &str = r#"
import sys
import grpc
port, name = sys.argv[1], sys.argv[2]
opts = [("grpc.default_authority", name + ":" + port), ("grpc.enable_http_proxy", 0),
        ("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20)]
if len(sys.argv) > 3:
    creds = grpc.ssl_channel_credentials(root_certificates=open(sys.argv[3], "rb").read())
    ch = grpc.secure_channel("127.0.0.1:" + port, creds, options=opts + [("grpc.ssl_target_name_override", name)])
else:
    ch = grpc.insecure_channel("127.0.0.1:" + port, options=opts)
unary = ch.unary_unary("/test.Echo/Unary")
assert unary(b"hi", timeout=10) == b"echo:hi"
big = b"y" * (3 << 20)
assert unary(big, timeout=20) == b"echo:" + big
items = list(ch.unary_stream("/test.Echo/Stream")(b"20", timeout=20))
assert len(items) == 20, len(items)
assert all(x.startswith(b"%d:" % i) and len(x) > 100000 for i, x in enumerate(items))
try:
    ch.unary_unary("/test.Echo/Fail")(b"abc", timeout=10)
    raise SystemExit("Fail did not fail")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.NOT_FOUND, e.code()
    assert e.details() == "no such thing: abc", e.details()
print("grpc ok")
"#;
