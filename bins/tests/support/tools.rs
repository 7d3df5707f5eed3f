//! The programs the tests run besides the workspace's own, found or named:
//! a test that needs a missing one fails with the Debian package to
//! install, never passes by skipping. The list is `.ci/test-deps`, which
//! `.ci/install-test-deps` installs from. Standard library only: both test
//! harnesses compile this one file (`bins/tests/support` and the
//! `opennotr-tests` crate).

use std::path::{Path, PathBuf};

const DEPS: &str = include_str!("../../../.ci/test-deps");

/// The Debian package that provides `tool` (per `.ci/test-deps`).
pub fn package_of(tool: &str) -> &'static str {
    DEPS.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?, f.next()?, f.next()?))
        })
        .find(|(_, name, _)| *name == tool)
        .map(|(_, _, package)| package)
        .unwrap_or_else(|| panic!("{tool:?} is not listed in .ci/test-deps; add it there with its package"))
}

/// Where `tool` is: on PATH, or in /usr/sbin or /sbin (Debian's nginx,
/// nft and ip live there and root's PATH may not list them). Panics naming
/// the package to install when it is nowhere.
pub fn need(tool: &str) -> PathBuf {
    find(tool).unwrap_or_else(|| {
        let package = package_of(tool);
        panic!(
            "`{tool}` is not installed, and this test needs it: install Debian's {package} \
             (apt-get install {package}), or run .ci/install-test-deps as root, which installs \
             everything the tests use"
        )
    })
}

/// Where `tool` is, if anywhere (see [`need`]).
pub fn find(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| Path::new(p).is_file())
}

/// A Python interpreter that can import `module`: `/usr/bin/python3` (where
/// Debian's packages install), else the first `python3` on PATH (which may
/// be another interpreter, a pyenv shim). Panics naming the package to
/// install when neither can.
pub fn python_with(module: &str) -> &'static str {
    ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|py| {
            std::process::Command::new(py)
                .args(["-c", &format!("import {module}")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .unwrap_or_else(|| {
            let package = package_of(module);
            panic!(
                "no python3 here can import {module}, and this test needs it: install Debian's {package} \
                 (apt-get install {package}), or run .ci/install-test-deps as root"
            )
        })
}
