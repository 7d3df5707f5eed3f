//! `opennotrd init`: writes the commented configuration of
//! `opennotr_config::server_template` with a new random key, private to
//! its owner, and prints how to start the server and its clients.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use opennotr_config::{ServerTemplate, EXIT_USAGE};

/// The control listener `init` and `--domain` use by default.
pub(crate) const DEFAULT_LISTEN: &str = ":10100";

/// A placeholder zone (`.test` is reserved, RFC 6761) for an `init`
/// without `--domain`.
const PLACEHOLDER_DOMAIN: &str = "opennotr.test";

#[derive(Debug, clap::Args)]
pub(crate) struct InitArgs {
    /// The zone client domains are made under (server.domain); also the
    /// host name clients are told to reach. Default: opennotr.test, a
    /// placeholder to edit.
    #[arg(long, value_name = "DOMAIN")]
    domain: Option<String>,
    /// Where to write the configuration.
    #[arg(long, value_name = "FILE", default_value = "notrd.yaml")]
    out: PathBuf,
    /// Overwrite the file if it exists.
    #[arg(long)]
    force: bool,
    /// The control listener (server.listen).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    listen: String,
}

pub(crate) fn run(args: &InitArgs) -> ExitCode {
    let fail = |m: String| {
        eprintln!("opennotrd init: {m}");
        ExitCode::from(EXIT_USAGE as u8)
    };
    let t = ServerTemplate {
        listen: args.listen.clone(),
        domain: args.domain.clone().unwrap_or_else(|| PLACEHOLDER_DOMAIN.into()),
        key: opennotr_config::random_key(),
    };
    // Validated as it will be read: `init` never writes a file
    // `opennotrd -c` refuses.
    let cfg = match opennotr_config::server_from_args(&t) {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    if let Err(e) = write_private(&args.out, opennotr_config::server_template(&t).as_bytes(), args.force) {
        return fail(e);
    }
    let port = cfg.server.listen.port();
    let host = match &args.domain {
        Some(d) => d.clone(),
        None => "SERVER_HOST".into(),
    };
    println!("wrote {} (mode 0600, a new random key)", args.out.display());
    println!("start the server:");
    println!("  opennotrd -c {}", args.out.display());
    println!("then on a client (the key stays off the command line):");
    println!("  export OPENNOTR_KEY={}", t.key);
    println!("  opennotr tcp 8080 --server {host}:{port}");
    if args.domain.is_none() {
        println!("(SERVER_HOST: this host's public name or address; set server.domain in the file)");
    }
    ExitCode::SUCCESS
}

/// Writes `data` to `path`, readable by its owner only; an existing file
/// is kept unless `force`.
fn write_private(path: &Path, data: &[u8], force: bool) -> Result<(), String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => format!("{} exists; --force overwrites it", path.display()),
        _ => format!("{}: {e}", path.display()),
    })?;
    // An existing file keeps its mode through `open`: the key must not
    // stay readable by others.
    f.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(data).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}
