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
    /// Print the version.
    Version,
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
