//! `opennotr`: the client. Reads its config (a file, or forwards and flags
//! on the command line), keeps the tunnel up, prints what the server gave
//! it; `opennotr check` tries every step once and reports.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use clap_complete::Shell;
use opennotr_client::{Client, Event};
use opennotr_config::{ClientConfig, ConfigError, EXIT_USAGE};

/// Exposes local services through an opennotrd server.
#[derive(Debug, Parser)]
#[command(
    name = "opennotr",
    version,
    after_help = "Forwards on the command line (docs/cli.md):\n  \
        opennotr tcp 8080 --server relay.example.com:10100      (key from OPENNOTR_KEY)\n  \
        opennotr tcp 8080 10022:22 udp 5353 http 3000 --domain app.example.com\n  \
        opennotr http 192.168.1.5:3000\n  \
        opennotr check [-c FILE | FORWARD...]\n  \
        opennotr hash-password < password-file   (a basicAuth hash)\n\
        Without forwards, the configuration file is read (-c, default config.yaml)."
)]
struct Args {
    /// Configuration file (the original's `-conf FILE` works too); default
    /// config.yaml when no forwards are given.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// What to publish: a protocol (tcp, udp, http, https, h2c, tls...)
    /// then its local ports: `8080`, `PUBLIC:LOCAL` (10022:22), `IP:PORT`
    /// (192.168.1.5:8080), `PUBLIC:IP:PORT`. `check` first checks instead.
    #[arg(value_name = "FORWARD")]
    forwards: Vec<String>,
    /// The server, host:port.
    #[arg(long, value_name = "HOST:PORT", env = "OPENNOTR_SERVER")]
    server: Option<String>,
    /// File holding the key (its first line).
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// The key. Prefer OPENNOTR_KEY or --key-file: a flag is visible to
    /// every user of the host (`ps`).
    #[arg(long, value_name = "KEY", env = "OPENNOTR_KEY", hide_env_values = true)]
    key: Option<String>,
    /// The client's credential name on the server (its `clients` list).
    #[arg(long, value_name = "NAME", env = "OPENNOTR_NAME")]
    name: Option<String>,
    /// Domain to ask for; default: the server picks one.
    #[arg(long, value_name = "DOMAIN")]
    domain: Option<String>,
    /// How to reach the server: tcp (default) or quic.
    #[arg(long, value_name = "tcp|quic")]
    transport: Option<String>,
    /// Log level or filter (default: $RUST_LOG, else info).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log one JSON object per line.
    #[arg(long)]
    log_json: bool,
    /// Print the shell completion script for SHELL and exit; no
    /// configuration file is read.
    // Left out of -h: installing completions is a one-off, not an everyday flag.
    #[arg(long, value_name = "SHELL", exclusive = true, hide_short_help = true)]
    completions: Option<Shell>,
}

/// The one-line flags: given on the command line with a file, they would
/// be silently ignored, so they are refused instead.
const LINE_FLAGS: &[(&str, &str)] = &[
    ("server", "--server"),
    ("key_file", "--key-file"),
    ("key", "--key"),
    ("name", "--name"),
    ("domain", "--domain"),
    ("transport", "--transport"),
];

fn usage(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("opennotr: {e}");
    ExitCode::from(EXIT_USAGE as u8)
}

/// The configuration to run or check: the file, or the command line's
/// forwards through the file's validation.
fn config(args: &Args, matches: &ArgMatches, forwards: &[String]) -> Result<ClientConfig, String> {
    if forwards.is_empty() {
        if let Some((_, flag)) =
            LINE_FLAGS.iter().find(|(id, _)| matches.value_source(id) == Some(ValueSource::CommandLine))
        {
            return Err(format!("{flag}: only with forwards on the command line (the file has its own keys)"));
        }
        let path = args.config.clone().unwrap_or_else(|| PathBuf::from("config.yaml"));
        return opennotr_config::load_client(&path).map_err(|e| format!("{}: {e}", path.display()));
    }
    if let Some(c) = &args.config {
        return Err(format!("--config {}: either a file or forwards on the command line, not both", c.display()));
    }
    let forwards = opennotr_cli::forwards::parse_forwards(forwards).map_err(|e| e.to_string())?;
    let key = match &args.key_file {
        Some(p) => Some(opennotr_cli::read_key_file(p)?),
        None => args.key.clone(),
    };
    let values = opennotr_config::ClientArgs {
        server: args.server.clone(),
        key,
        name: args.name.clone(),
        domain: args.domain.clone(),
        transport: args.transport.clone(),
        forwards,
    };
    opennotr_config::client_from_args(&values).map_err(|e: ConfigError| e.to_string())
}

fn main() -> ExitCode {
    let matches = Args::command().get_matches_from(opennotr_cli::normalize_args(std::env::args_os()));
    let args = match Args::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    if let Some(shell) = args.completions {
        clap_complete::generate(shell, &mut Args::command(), "opennotr", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    if args.forwards.first().is_some_and(|w| w == "hash-password") {
        if let Some(extra) = args.forwards.get(1) {
            return usage(format!(
                "hash-password: reads the password on standard input; {extra:?} is one argument too many"
            ));
        }
        return hash_password();
    }
    let checking = args.forwards.first().is_some_and(|w| w == "check");
    let forwards = if checking { &args.forwards[1..] } else { &args.forwards[..] };
    let cfg = match config(&args, &matches, forwards) {
        Ok(c) => c,
        Err(e) if checking => {
            println!("FAIL configuration: {e}");
            return ExitCode::from(EXIT_USAGE as u8);
        }
        Err(e) => return usage(e),
    };
    if checking {
        return check(cfg);
    }
    opennotr_cli::init_tracing(args.log_level.as_deref(), args.log_json);
    opennotr_cli::raise_fd_limit();
    let rt = match opennotr_cli::runtime(cfg.workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("opennotr: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let shutdown = opennotr_cli::shutdown_on_signals();
        let client = Client::new(
            cfg,
            Arc::new(|e: &Event| match e {
                Event::Connected(reg) => {
                    for line in reg.lines() {
                        println!("{line}");
                    }
                }
                Event::Refused { code, message } => {
                    println!("refused by server ({code}): {message}")
                }
                Event::Disconnected { reason, retry_in } => {
                    println!("disconnected: {reason}; retrying in {:.1}s", retry_in.as_secs_f64())
                }
                _ => {}
            }),
        );
        client.run(shutdown).await;
    });
    ExitCode::SUCCESS
}

/// `opennotr check`: one line per check on stdout; the exit status is the
/// first kind of failure (docs/cli.md), 0 when all pass.
fn check(cfg: ClientConfig) -> ExitCode {
    let n: usize = cfg.forwards.iter().map(|f| f.ports.len()).sum();
    println!("ok   configuration valid ({n} forward{})", if n == 1 { "" } else { "s" });
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("opennotr: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let failed = rt.block_on(opennotr_client::check(&cfg, |line| println!("{line}")));
    match failed {
        None => ExitCode::SUCCESS,
        Some(f) => ExitCode::from(f.exit_code()),
    }
}

/// `opennotr hash-password`: reads a password on standard input (not the
/// command line, which other users see) and prints its argon2id hash for a
/// `basicAuth` entry (docs/access-control.md).
fn hash_password() -> ExitCode {
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() || line.trim_end_matches(['\r', '\n']).is_empty() {
        eprintln!("opennotr hash-password: give the password on standard input");
        return ExitCode::from(EXIT_USAGE as u8);
    }
    let salt: [u8; 16] = rand::random();
    match opennotr_config::access::hash_password(line.trim_end_matches(['\r', '\n']).as_bytes(), &salt) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("opennotr hash-password: {e}");
            ExitCode::FAILURE
        }
    }
}
