//! Where the mail daemons' programs come from: the host's packages, or a Debian root directory
//! (e2e/debian13-root.sh builds one) on a machine whose own release ships other versions.
//!
//! A command run in a root gets a private mount namespace (`unshare --mount`), in which the
//! directories it works on are bind-mounted into the root at the same paths, with `/dev` and a
//! fresh `/proc`, before `chroot`. Paths in configuration files, arguments and pid files are
//! therefore the same inside and outside, the process keeps its host pid and the host's network,
//! and nothing is mounted outside the command's own namespace.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variable naming a root for commands that take no `--root` flag (the tests).
pub const ROOT_ENV: &str = "POSTWARDEN_ROOT";

/// Directories searched for a program inside a root, in order.
const PROGRAM_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// Bind-mounts the directories named on the command line into the root, then chroots into it.
/// Arguments: ROOT, the number N of shared directories, the N directories, the command.
const ENTER: &str = r#"set -eu
root=$1; n=$2; shift 2
while [ "$n" -gt 0 ]; do
  mkdir -p "$root$1"
  mount --bind "$1" "$root$1"
  shift; n=$((n - 1))
done
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
for f in /etc/hosts /etc/resolv.conf; do
  if [ -f "$f" ]; then
    [ -e "$root$f" ] || : > "$root$f"
    mount --bind "$f" "$root$f"
  fi
done
exec chroot "$root" "$@""#;

/// The programs of the mail stack come from the host or from a root directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Runtime {
    #[default]
    Host,
    Root {
        dir: PathBuf,
        /// Host directories visible inside the root at the same path.
        shared: Vec<PathBuf>,
    },
}

impl Runtime {
    /// A root directory; fails unless it holds a Debian system.
    pub fn root(dir: &Path) -> anyhow::Result<Self> {
        let dir = std::path::absolute(dir)?;
        if !dir.join("etc/debian_version").is_file() {
            anyhow::bail!(
                "{} is not a Debian root (no etc/debian_version); build one with e2e/debian13-root.sh",
                dir.display()
            );
        }
        Ok(Self::Root {
            dir,
            shared: Vec::new(),
        })
    }

    /// The root named by `POSTWARDEN_ROOT`, else the host.
    pub fn from_env() -> anyhow::Result<Self> {
        match std::env::var_os(ROOT_ENV) {
            Some(dir) if !dir.is_empty() => Self::root(Path::new(&dir)),
            _ => Ok(Self::Host),
        }
    }

    /// Makes `dir` (absolute) visible to the commands at the same path.
    pub fn sharing(mut self, dir: &Path) -> Self {
        if let Self::Root { shared, .. } = &mut self {
            if !shared.iter().any(|d| d == dir) {
                shared.push(dir.to_path_buf());
            }
        }
        self
    }

    /// What the programs' paths are relative to: `/` or the root directory.
    pub fn base(&self) -> &Path {
        match self {
            Self::Host => Path::new("/"),
            Self::Root { dir, .. } => dir,
        }
    }

    /// The path (as the command sees it) of program `name`: found on the host's PATH and sbin
    /// directories, or in the root's system directories.
    pub fn find_program(&self, name: &str) -> Option<PathBuf> {
        match self {
            Self::Host => crate::local::preflight::find_program(name),
            Self::Root { dir, .. } => PROGRAM_DIRS
                .iter()
                .map(|d| Path::new(d).join(name))
                .find(|p| is_executable(&dir.join(p.strip_prefix("/").unwrap_or(p)))),
        }
    }

    /// The program and arguments that run `program args` in this runtime.
    pub fn wrap(&self, program: &Path, args: Vec<OsString>) -> (PathBuf, Vec<OsString>) {
        match self {
            Self::Host => (program.to_path_buf(), args),
            Self::Root { dir, shared } => {
                let mut all: Vec<OsString> = vec![
                    "--mount".into(),
                    "--".into(),
                    "/bin/sh".into(),
                    "-c".into(),
                    ENTER.into(),
                    "sh".into(),
                    dir.into(),
                    shared.len().to_string().into(),
                ];
                all.extend(shared.iter().map(OsString::from));
                all.push(program.into());
                all.extend(args);
                let unshare = crate::local::preflight::find_program("unshare")
                    .unwrap_or_else(|| PathBuf::from("/usr/bin/unshare"));
                (unshare, all)
            }
        }
    }

    /// A command running `program` (a name found with [`Self::find_program`], or a path) in
    /// this runtime; arguments added to it go to the program.
    pub fn command(&self, program: &str) -> Command {
        let path = self
            .find_program(program)
            .unwrap_or_else(|| PathBuf::from(program));
        let (program, args) = self.wrap(&path, Vec::new());
        let mut cmd = Command::new(program);
        cmd.args(args);
        cmd
    }

    /// The id of a group of this runtime (the root has its own /etc/group).
    pub fn group_id(&self, name: &str) -> anyhow::Result<u32> {
        let field = 2;
        let file = self.base().join("etc/group");
        let text = std::fs::read_to_string(&file)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", file.display()))?;
        text.lines()
            .map(|line| line.split(':').collect::<Vec<_>>())
            .find(|fields| fields.first() == Some(&name))
            .and_then(|fields| fields.get(field)?.parse().ok())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{name} is not in {} (it comes with the Debian mail daemon packages)",
                    file.display()
                )
            })
    }

    /// `NAME VERSION` of the mail daemons this runtime holds, for messages.
    pub fn versions(&self) -> anyhow::Result<Versions> {
        let out = |program: &str, args: &[&str]| -> anyhow::Result<String> {
            let o = self.command(program).args(args).output()?;
            if !o.status.success() {
                anyhow::bail!(
                    "{program} {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&o.stderr).trim()
                );
            }
            Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let dovecot = out("dovecot", &["--version"])?;
        Ok(Versions {
            postfix: out("postconf", &["-dh", "mail_version"])?,
            dovecot: dovecot.split_whitespace().next().unwrap_or("").to_string(),
        })
    }
}

/// The releases of the daemons whose configuration formats the renderers target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versions {
    pub postfix: String,
    pub dovecot: String,
}

/// Dovecot releases the rendered configuration is written for (`dovecot_config_version`).
pub const DOVECOT_SERIES: &str = "2.4";
/// The oldest Postfix release the rendered configuration is written for.
pub const POSTFIX_MIN: (u32, u32) = (3, 10);

impl Versions {
    /// Refuses daemons whose configuration language the renderers do not speak.
    pub fn check(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        if !self.dovecot.starts_with(&format!("{DOVECOT_SERIES}.")) {
            problems.push(format!(
                "Dovecot {} (the configuration is written for Dovecot {DOVECOT_SERIES})",
                self.dovecot
            ));
        }
        let postfix: Vec<u32> = self
            .postfix
            .split('.')
            .filter_map(|p| p.parse().ok())
            .collect();
        if postfix.len() < 2 || (postfix[0], postfix[1]) < POSTFIX_MIN {
            problems.push(format!(
                "Postfix {} (the configuration is written for Postfix {}.{} or newer)",
                self.postfix, POSTFIX_MIN.0, POSTFIX_MIN.1
            ));
        }
        if problems.is_empty() {
            return Ok(());
        }
        anyhow::bail!(
            "unsupported daemon release(s): {}; run them from a Debian 13 root with --root DIR (e2e/debian13-root.sh builds one)",
            problems.join(", ")
        )
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_other_than_dovecot_2_4_and_postfix_3_10_are_refused() {
        let ok = Versions {
            postfix: "3.10.13".into(),
            dovecot: "2.4.1-4".into(),
        };
        ok.check().unwrap();
        let old = Versions {
            postfix: "3.7.11".into(),
            dovecot: "2.3.19.1".into(),
        };
        let err = old.check().unwrap_err().to_string();
        assert!(err.contains("Dovecot 2.3.19.1"), "{err}");
        assert!(err.contains("Postfix 3.7.11"), "{err}");
        assert!(err.contains("--root DIR"), "{err}");
    }

    #[test]
    fn a_directory_without_debian_is_not_a_root() {
        let dir = tempfile::tempdir().unwrap();
        let err = Runtime::root(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a Debian root"), "{err}");
    }

    #[test]
    fn ids_come_from_the_runtime_s_own_databases() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/debian_version"), "13.8\n").unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\ndovecot:x:106:\n").unwrap();
        let rt = Runtime::root(dir.path()).unwrap();
        assert_eq!(rt.group_id("dovecot").unwrap(), 106);
        let err = rt.group_id("postfix").unwrap_err().to_string();
        assert!(err.contains("postfix is not in"), "{err}");
    }

    #[test]
    fn a_root_command_enters_the_root_with_the_shared_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/debian_version"), "13.8\n").unwrap();
        let rt = Runtime::root(dir.path())
            .unwrap()
            .sharing(Path::new("/srv/mail"));
        let (program, args) = rt.wrap(Path::new("/usr/sbin/dovecot"), vec!["-F".into()]);
        assert!(program.ends_with("unshare"));
        let tail: Vec<_> = args[args.len() - 5..].to_vec();
        assert_eq!(
            tail,
            [
                dir.path().as_os_str().to_owned(),
                "1".into(),
                "/srv/mail".into(),
                "/usr/sbin/dovecot".into(),
                "-F".into()
            ]
        );
        assert_eq!(
            Runtime::Host.wrap(Path::new("/bin/true"), vec![]).0,
            Path::new("/bin/true")
        );
    }
}
