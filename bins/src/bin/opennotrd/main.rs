//! `opennotrd`: the server. Reads its config (a bad one exits 64 before
//! anything binds), serves until SIGINT/SIGTERM, drains, exits 0. SIGHUP
//! re-reads the file (a broken one is refused and the old config stays).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use clap_complete::Shell;
use opennotr_server::{builtin_plugins, Server, ServerError};

mod demo;

/// Makes services behind NAT reachable through this host.
#[derive(Debug, Parser)]
#[command(name = "opennotrd", version)]
struct Args {
    /// Configuration file (the original's `-conf FILE` works too).
    #[arg(short, long, value_name = "FILE", default_value = "notrd.yaml", conflicts_with = "demo")]
    config: PathBuf,
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
}

fn main() -> ExitCode {
    let args = Args::parse_from(opennotr_cli::normalize_args(std::env::args_os()));
    if let Some(shell) = args.completions {
        clap_complete::generate(shell, &mut Args::command(), "opennotrd", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let cfg = if args.demo {
        None
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
    let config_path = args.config.clone();
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
                server.handle().set_config_path(config_path);
                server.run(shutdown).await
            }
            None => demo::run(shutdown).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
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
