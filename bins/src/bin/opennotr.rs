//! `opennotr`: the client. Reads its config, keeps the tunnel up, prints
//! what the server gave it.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{CommandFactory, Parser};
use clap_complete::Shell;
use opennotr_client::{Client, Event};

/// Exposes local services through an opennotrd server.
#[derive(Debug, Parser)]
#[command(name = "opennotr", version)]
struct Args {
    /// Configuration file (the original's `-conf FILE` works too).
    #[arg(short, long, value_name = "FILE", default_value = "config.yaml")]
    config: PathBuf,
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

fn main() -> std::process::ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "hash-password") {
        return hash_password();
    }
    let args = Args::parse_from(opennotr_cli::normalize_args(std::env::args_os()));
    if let Some(shell) = args.completions {
        clap_complete::generate(shell, &mut Args::command(), "opennotr", &mut std::io::stdout());
        return std::process::ExitCode::SUCCESS;
    }
    let cfg = match opennotr_config::load_client(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("opennotr: {}: {e}", args.config.display());
            return std::process::ExitCode::from(opennotr_config::EXIT_USAGE as u8);
        }
    };
    opennotr_cli::init_tracing(args.log_level.as_deref(), args.log_json);
    opennotr_cli::raise_fd_limit();
    let rt = match opennotr_cli::runtime(cfg.workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("opennotr: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
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
    std::process::ExitCode::SUCCESS
}

/// `opennotr hash-password`: reads a password on standard input (not the
/// command line, which other users see) and prints its argon2id hash for a
/// `basicAuth` entry (docs/access-control.md).
fn hash_password() -> std::process::ExitCode {
    let mut line = String::new();
    if std::io::stdin().read_line(&mut line).is_err() || line.trim_end_matches(['\r', '\n']).is_empty() {
        eprintln!("opennotr hash-password: give the password on standard input");
        return std::process::ExitCode::from(opennotr_config::EXIT_USAGE as u8);
    }
    let salt: [u8; 16] = rand::random();
    match opennotr_config::access::hash_password(line.trim_end_matches(['\r', '\n']).as_bytes(), &salt) {
        Ok(h) => {
            println!("{h}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("opennotr hash-password: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
