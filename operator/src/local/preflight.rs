//! Checks made before anything is started, so a missing daemon or a busy port is reported
//! clearly instead of surfacing as a daemon's obscure log line.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};

use crate::runtime::Runtime;

/// Directories searched after `PATH`: daemons live in sbin, which is often not on a user's PATH.
const SBIN_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin"];

/// A program the local stack runs, and the Debian package that provides it.
#[derive(Clone, Copy, Debug)]
pub struct Program {
    pub name: &'static str,
    pub package: &'static str,
}

/// Every program `local up` and the entrypoints it runs need.
pub const PROGRAMS: &[Program] = &[
    Program {
        name: "postfix",
        package: "postfix",
    },
    Program {
        name: "dovecot",
        package: "dovecot-core",
    },
    Program {
        name: "doveadm",
        package: "dovecot-core",
    },
    Program {
        name: "doveconf",
        package: "dovecot-core",
    },
    Program {
        name: "rspamd",
        package: "rspamd",
    },
    Program {
        name: "sh",
        package: "dash",
    },
    Program {
        name: "find",
        package: "findutils",
    },
    Program {
        name: "cksum",
        package: "coreutils",
    },
];

/// The absolute path of `name`, searching `PATH` and then the sbin directories.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Resolves every program in `programs` in `runtime`, or names all that are missing and how to
/// install them.
pub fn find_programs(runtime: &Runtime, programs: &[Program]) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for p in programs {
        match runtime.find_program(p.name) {
            Some(path) => found.push(path),
            None => missing.push(p),
        }
    }
    if missing.is_empty() {
        return Ok(found);
    }
    let names: Vec<&str> = missing.iter().map(|p| p.name).collect();
    let mut packages: Vec<&str> = missing.iter().map(|p| p.package).collect();
    packages.dedup();
    let searched = match runtime {
        Runtime::Host => format!("PATH and {}", SBIN_DIRS.join(", ")),
        Runtime::Root { dir, .. } => format!("the root {}", dir.display()),
    };
    anyhow::bail!(
        "{} not found (searched {searched}); install the Debian package(s) {} there, or run the daemons from a Debian 13 root with --root DIR (e2e/debian13-root.sh builds one)",
        names.join(", "),
        packages.join(" ")
    )
}

/// Fails naming every port of `ports` (service name, port) that something already listens on
/// at 127.0.0.1.
pub fn check_ports_free(ports: &[(String, u16)]) -> anyhow::Result<()> {
    let busy: Vec<String> = ports
        .iter()
        .filter(|(_, port)| {
            TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, *port)).is_err()
        })
        .map(|(service, port)| format!("127.0.0.1:{port} ({service})"))
        .collect();
    if busy.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "port(s) already in use: {}; stop what listens there or choose another --port-base",
        busy.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_named_with_its_package() {
        let err = find_programs(
            &Runtime::Host,
            &[Program {
                name: "postwarden-no-such-daemon",
                package: "no-such-package",
            }],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("postwarden-no-such-daemon not found"),
            "{err}"
        );
        assert!(err.contains("no-such-package"), "{err}");
    }

    #[test]
    fn programs_on_path_are_found() {
        assert!(find_program("sh").is_some_and(|p| p.is_absolute()));
    }

    #[test]
    fn a_taken_port_is_reported() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = check_ports_free(&[("smtp".into(), port)])
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("127.0.0.1:{port} (smtp)")), "{err}");
        drop(taken);
        check_ports_free(&[("smtp".into(), port)]).unwrap();
    }
}
