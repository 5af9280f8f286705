//! The `postwarden` command: the operator itself and its offline tools.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "postwarden",
    version,
    about = "Kubernetes operator for private, hardened email clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator against the cluster of $KUBECONFIG (or the in-cluster configuration)
    /// until SIGTERM or SIGINT.
    Run(Box<postwarden::controller::Config>),
    /// Print the CustomResourceDefinitions as YAML.
    Crds,
    /// Print every Kubernetes object the operator would create for the resources in a file or
    /// directory, without a cluster.
    Render {
        /// A YAML file or a directory of YAML files holding MailDomains, Mailboxes and the
        /// Secrets they reference. Without it, the embedded quickstart example is rendered.
        #[arg(short = 'f', long = "filename")]
        file: Option<PathBuf>,
        /// Print the DNS records each domain needs, in zone-file syntax, instead of objects.
        #[arg(long)]
        dns: bool,
    },
    /// Backups of a MailDomain's mail.
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Run the mail stack of one MailDomain on this machine, in the real Postfix, Dovecot and
    /// Rspamd, from exactly the files the operator renders (no cluster needed).
    #[command(subcommand)]
    Local(LocalCommand),
    /// Keep one Dovecot instance's mailboxes in sync with its peers (the replication agent the
    /// IMAP entrypoint runs beside Dovecot).
    Replicate {
        /// The agent configuration (replication-<ordinal>.json in the IMAP ConfigMap).
        #[arg(long)]
        config: PathBuf,
    },
    /// Relay to a hosted provider and switch the emergency inboxes on while it is down (the
    /// continuity agent the MTA entrypoint runs beside Postfix).
    Continuity {
        /// The agent configuration (continuity.json in the MTA ConfigMap).
        #[arg(long)]
        config: PathBuf,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Print (or, with --apply, create) a Job that restores one mailbox or all from the latest
    /// or a named snapshot into the running replicas. Mail that arrived after the snapshot is
    /// kept: the snapshot's messages are imported alongside, and messages still present are
    /// not doubled.
    Restore(postwarden::backup::command::RestoreArgs),
}

#[derive(Subcommand)]
enum LocalCommand {
    /// Start the stack on 127.0.0.1 and run it until Ctrl-C (SIGINT) or SIGTERM. When every
    /// daemon listens, DIR/ca.crt (the CA to trust), DIR/dns.txt (the DNS records) and
    /// DIR/ready are written. SIGUSR1 restarts Postfix alone (with its agents), as a
    /// Kubernetes MTA container restart does; DIR/ready then names its new pid.
    Up {
        /// YAML file or directory with one MailDomain, its Mailboxes and their password Secrets.
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
        /// Directory holding the configuration, keys, mail and logs; reused across runs.
        #[arg(long)]
        dir: PathBuf,
        /// Every service listens on this plus its standard port (25, 465, 587, 143, 993); the
        /// second Dovecot instance on a further 10000.
        #[arg(long, default_value_t = postwarden::local::up::DEFAULT_PORT_BASE)]
        port_base: u16,
        /// Run Postfix, Dovecot and Rspamd from this Debian 13 root directory (entered with
        /// unshare and chroot) instead of the host's packages; `e2e/debian13-root.sh` builds one.
        #[arg(long, env = "POSTWARDEN_ROOT")]
        root: Option<PathBuf>,
    },
    /// Run one program of the daemons' runtime (doveadm, postqueue, postconf, ...): the host's,
    /// or the one in the --root directory with the --share directories visible at their paths.
    Exec {
        /// The Debian root the daemons run from (as for `local up`).
        #[arg(long, env = "POSTWARDEN_ROOT")]
        root: Option<PathBuf>,
        /// A directory the program works on (repeatable): e.g. the `local up` DIR.
        #[arg(long)]
        share: Vec<PathBuf>,
        /// The program and its arguments.
        #[arg(trailing_var_arg = true, required = true, allow_hyphen_values = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Apply a changed file to a running stack as the operator would (users, aliases, keys),
    /// without restarting a daemon.
    Reload {
        /// The directory of the running `local up`.
        #[arg(long)]
        dir: PathBuf,
        /// Read the resources from this file instead of the one `local up` was started with.
        #[arg(short = 'f', long = "filename")]
        file: Option<PathBuf>,
        /// Also issue a new serving certificate, as the operator does before expiry.
        #[arg(long)]
        rotate_certificate: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(config) => run(*config),
        Command::Crds => {
            print!("{}", postwarden::crd::yaml());
            Ok(())
        }
        Command::Render { file, dns } => render(file, dns),
        Command::Backup {
            command: BackupCommand::Restore(args),
        } => tokio::runtime::Runtime::new()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(postwarden::backup::command::restore(args))),
        Command::Local(LocalCommand::Up {
            file,
            dir,
            port_base,
            root,
        }) => postwarden::local::up::up(postwarden::local::up::UpOptions {
            file,
            dir,
            port_base,
            root,
        }),
        Command::Local(LocalCommand::Exec {
            root,
            share,
            command,
        }) => postwarden::local::exec(root.as_deref(), &share, &command),
        Command::Local(LocalCommand::Reload {
            dir,
            file,
            rotate_certificate,
        }) => postwarden::local::up::reload(postwarden::local::up::ReloadOptions {
            dir,
            file,
            rotate_certificate,
        }),
        Command::Replicate { config } => postwarden::replicate::run(&config),
        Command::Continuity { config } => postwarden::continuity::run(&config),
        Command::Version => {
            println!("postwarden {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: postwarden::controller::Config) -> anyhow::Result<()> {
    postwarden::controller::init_logging(config.log_format);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(postwarden::controller::run(config))
}

fn render(file: Option<PathBuf>, dns: bool) -> anyhow::Result<()> {
    let inputs = match &file {
        Some(path) => postwarden::manifest::load_path(path)?,
        None => {
            let mut inputs = postwarden::manifest::Inputs::default();
            postwarden::manifest::load_str(
                std::path::Path::new("<embedded quickstart>"),
                postwarden::render::QUICKSTART,
                &mut inputs,
            )?;
            inputs
        }
    };
    let out = if dns {
        postwarden::render::dns_zone(&inputs)?
    } else {
        postwarden::render::objects_yaml(&inputs)?
    };
    print!("{out}");
    Ok(())
}
