//! `postwarden backup restore`: the restore Job for a MailDomain, printed or created.
//!
//! The MailDomain is read from manifests (`-f`) or from the cluster (the current kubeconfig).
//! Printed, the Job can be reviewed and created with `kubectl create -f -` (its name is
//! generated, so `kubectl apply` does not fit); with `--apply` it is created here.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, PostParams};

use super::script::RestoreRequest;
use crate::api::maildomain::MailDomain;
use crate::manifest;
use crate::resources::backup::build_restore_job;
use crate::resources::images::Images;

/// Arguments of `postwarden backup restore`.
#[derive(clap::Args, Clone, Debug)]
pub struct RestoreArgs {
    /// Name of the MailDomain whose backups to restore from.
    #[arg(long)]
    pub domain: String,
    /// Namespace of the MailDomain.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Restore only this address; every mailbox in the snapshot when absent.
    #[arg(long)]
    pub mailbox: Option<String>,
    /// Snapshot id (as `status.lastBackup.snapshot` shows it), or `latest`.
    #[arg(long, default_value = "latest")]
    pub snapshot: String,
    /// Read the MailDomain from this file or directory instead of the cluster.
    #[arg(short = 'f', long = "filename")]
    pub file: Option<PathBuf>,
    /// Image with doveadm and restic; the domain's IMAP image when absent.
    #[arg(long)]
    pub image: Option<String>,
    /// Create the Job in the cluster instead of printing it.
    #[arg(long)]
    pub apply: bool,
}

/// Runs `postwarden backup restore`.
pub async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let md = match &args.file {
        Some(path) => from_manifests(path, &args.domain, &args.namespace)?,
        None => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the cluster (use -f to read the MailDomain from a file)")?;
            Api::<MailDomain>::namespaced(client, &args.namespace)
                .get(&args.domain)
                .await
                .with_context(|| format!("reading MailDomain {}/{}", args.namespace, args.domain))?
        }
    };
    let job = restore_job(&md, &args)?;
    if !args.apply {
        print!("{}", manifest::to_yaml(&job));
        return Ok(());
    }
    let client = kube::Client::try_default()
        .await
        .context("connecting to the cluster")?;
    let created = Api::<Job>::namespaced(client, &args.namespace)
        .create(&PostParams::default(), &job)
        .await
        .context("creating the restore Job")?;
    let name = created.metadata.name.unwrap_or_default();
    println!("job.batch/{name} created");
    eprintln!(
        "follow it with: kubectl -n {} logs -f job/{name}\n\
         its result: kubectl -n {} get pods -l job-name={name} -o jsonpath='{{.items[*].status.containerStatuses[0].state.terminated.message}}'",
        args.namespace, args.namespace
    );
    Ok(())
}

/// The restore Job the arguments ask for.
pub fn restore_job(md: &MailDomain, args: &RestoreArgs) -> anyhow::Result<Job> {
    let namespace = md.metadata.namespace.as_deref().unwrap_or(&args.namespace);
    let image = args
        .image
        .clone()
        .unwrap_or_else(|| Images::for_spec(&md.spec, &Images::default()).imap);
    let request = RestoreRequest {
        mailbox: args.mailbox.clone(),
        snapshot: Some(args.snapshot.clone()),
    };
    build_restore_job(md, namespace, &image, &request).map_err(|e| anyhow!(e))
}

fn from_manifests(
    path: &std::path::Path,
    name: &str,
    namespace: &str,
) -> anyhow::Result<MailDomain> {
    let inputs = manifest::load_path(path)?;
    let found: Vec<MailDomain> = inputs
        .domains
        .into_iter()
        .filter(|d| d.metadata.name.as_deref() == Some(name))
        .filter(|d| d.metadata.namespace.as_deref().unwrap_or("default") == namespace)
        .collect();
    match found.len() {
        1 => Ok(found.into_iter().next().expect("one")),
        0 => bail!("{} holds no MailDomain {namespace}/{name}", path.display()),
        n => bail!(
            "{} holds {n} MailDomains {namespace}/{name}",
            path.display()
        ),
    }
}
