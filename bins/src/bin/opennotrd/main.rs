//! `opennotrd`: the server. Reads its config (a bad one exits 64 before
//! anything binds), serves until SIGINT/SIGTERM, drains, exits 0. SIGHUP
//! re-reads the file (a broken one is refused and the old config stays).
//! `opennotrd init` writes a commented file with a random key;
//! `opennotrd --domain D --key-file F` runs on that file's defaults
//! without writing it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use clap_complete::Shell;
use opennotr_server::{builtin_plugins, Server, ServerError};

mod demo;
mod init;

/// Makes services behind NAT reachable through this host.
#[derive(Debug, Parser)]
#[command(name = "opennotrd", version)]
struct Args {
    /// Configuration file (the original's `-conf FILE` works too).
    #[arg(short, long, value_name = "FILE", default_value = "notrd.yaml", conflicts_with = "demo")]
    config: PathBuf,
    /// Run without a file, on the defaults `opennotrd init` writes (listen
    /// :10100, dhcp 100.64.242.1/24, tcp ports 10000-20000, udp ports
    /// 20000-30000, no gateway, DNS or admin API), with this zone as
    /// server.domain. The key comes from --key-file or OPENNOTRD_KEY.
    #[arg(long, value_name = "DOMAIN", conflicts_with_all = ["config", "demo"])]
    domain: Option<String>,
    /// With --domain: the control listener (default :10100).
    #[arg(long, value_name = "ADDR", requires = "domain")]
    listen: Option<String>,
    /// With --domain: file holding the shared key (its first line).
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
    /// With --domain: the shared key. Prefer OPENNOTRD_KEY or --key-file:
    /// a flag is visible to every user of the host (`ps`).
    #[arg(long, value_name = "KEY", env = "OPENNOTRD_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Run a complete local setup on embedded defaults: a server, a client
    /// and a sample service, all on 127.0.0.1; prints what to try.
    #[arg(long)]
    demo: bool,
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
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a commented configuration with a new random key (mode 0600)
    /// and print the client command to use.
    Init(init::InitArgs),
}

fn usage(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("opennotrd: {e}");
    ExitCode::from(opennotr_config::EXIT_USAGE as u8)
}

/// The configuration `--domain` and the key flags stand for.
fn config_from_flags(args: &Args, matches: &ArgMatches, domain: &str) -> Result<opennotr_config::ServerConfig, String> {
    let key = match (&args.key_file, &args.key) {
        (Some(p), _) => opennotr_cli::read_key_file(p)?,
        (None, Some(k)) => k.clone(),
        (None, None) => return Err("--key-file: a key is required with --domain (or set OPENNOTRD_KEY)".into()),
    };
    if args.key_file.is_some() && matches.value_source("key") == Some(ValueSource::CommandLine) {
        return Err("--key: give --key or --key-file, not both".into());
    }
    let t = opennotr_config::ServerTemplate {
        listen: args.listen.clone().unwrap_or_else(|| init::DEFAULT_LISTEN.into()),
        domain: domain.into(),
        key,
    };
    opennotr_config::server_from_args(&t).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let matches = Args::command().get_matches_from(opennotr_cli::normalize_args(std::env::args_os()));
    let args = match Args::from_arg_matches(&matches) {
        Ok(a) => a,
        Err(e) => e.exit(),
    };
    if let Some(shell) = args.completions {
        clap_complete::generate(shell, &mut Args::command(), "opennotrd", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Init(init)) = &args.command {
        return init::run(init);
    }
    let cfg = if args.demo {
        None
    } else if let Some(domain) = &args.domain {
        match config_from_flags(&args, &matches, domain) {
            Ok(c) => Some(c),
            Err(e) => return usage(e),
        }
    } else if args.key_file.is_some() || matches.value_source("key") == Some(ValueSource::CommandLine) {
        return usage("--key-file/--key: only with --domain (a file has server.authKey)");
    } else {
        match opennotr_config::load_server(&args.config) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("opennotrd: {}: {e}", args.config.display());
                return ExitCode::from(opennotr_config::EXIT_USAGE as u8);
            }
        }
    };
    opennotr_cli::init_tracing(args.log_level.as_deref(), args.log_json);
    opennotr_cli::raise_fd_limit();
    let rt = match opennotr_cli::runtime(cfg.as_ref().and_then(|c| c.server.workers)) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("opennotrd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Without a file (--domain), SIGHUP has nothing to re-read.
    let config_path = args.domain.is_none().then(|| args.config.clone());
    let result = rt.block_on(async {
        let shutdown = opennotr_cli::shutdown_on_signals();
        match cfg {
            Some(cfg) => {
                let handle = std::sync::Arc::new(std::sync::OnceLock::<opennotr_server::ServerHandle>::new());
                let h = handle.clone();
                // `reload` logs what it applied or why it refused.
                opennotr_cli::on_hangup(move || match h.get() {
                    Some(h) => drop(h.reload()),
                    None => tracing::warn!("SIGHUP before the server was up; ignored"),
                });
                let server = Server::bind(cfg, &builtin_plugins()).await?;
                let _ = handle.set(server.handle());
                if let Some(p) = config_path {
                    server.handle().set_config_path(p);
                }
                server.run(shutdown).await
            }
            None => demo::run(shutdown).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ ServerError::Config { .. }) if args.domain.is_some() => usage(e),
        Err(e @ ServerError::Config { .. }) => {
            eprintln!("opennotrd: {}: {e}", args.config.display());
            ExitCode::from(opennotr_config::EXIT_USAGE as u8)
        }
        Err(e) => {
            eprintln!("opennotrd: {e}");
            ExitCode::FAILURE
        }
    }
}
