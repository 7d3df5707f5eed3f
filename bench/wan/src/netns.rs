//! Network namespaces: entering one from a thread, and creating and removing
//! the ones the emulator set up itself.

use std::fs::File;
use std::path::PathBuf;
use std::process::Command;

use nix::sched::{setns, CloneFlags};

use crate::Error;

/// Where `ip netns add` puts a namespace's handle.
pub fn ns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

pub fn exists(name: &str) -> bool {
    ns_path(name).exists()
}

/// Runs `f` on a thread of its own that has entered namespace `name`.
/// setns changes only the calling thread, so the rest of the process stays
/// where it was; devices and sockets made by `f` stay in `name` for good.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> Result<T, Error> + Send) -> Result<T, Error> {
    let path = ns_path(name);
    let handle = File::open(&path).map_err(|source| Error::NoNamespace { name: name.to_string(), source })?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&handle, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Setns { name: name.to_string(), source: e })?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Panicked))
    })
}

/// Runs iproute2's `ip` with `args`.
pub fn ip(args: &[&str]) -> Result<(), Error> {
    let out = Command::new("ip").args(args).output().map_err(|source| Error::Spawn { program: "ip", source })?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Command {
        command: format!("ip {}", args.join(" ")),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

/// Namespaces this process created; removed again when dropped, so a
/// failed start leaves nothing behind.
#[derive(Debug, Default)]
pub struct Created {
    names: Vec<String>,
    // Held open so that a namespace outlives `ip netns del` until the
    // process exits: the kernel closes the TUN descriptors (removing the
    // devices) before it tears the namespace down, instead of moving the
    // devices to the root namespace.
    handles: Vec<File>,
}

impl Created {
    pub fn create(&mut self, name: &str) -> Result<(), Error> {
        if exists(name) {
            return Err(Error::NamespaceExists(name.to_string()));
        }
        ip(&["netns", "add", name])?;
        self.names.push(name.to_string());
        self.handles
            .push(File::open(ns_path(name)).map_err(|source| Error::NoNamespace { name: name.to_string(), source })?);
        ip(&["-n", name, "link", "set", "lo", "up"])
    }

    pub fn remove_all(&mut self) {
        for name in self.names.drain(..) {
            // Best effort: the emulator is exiting anyway.
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        self.remove_all();
    }
}
