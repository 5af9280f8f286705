//! Reconcile of a Mailbox on its own: reports Mailboxes whose MailDomain does not exist (or
//! cannot be read) and Mailboxes that cannot be read at all.
//!
//! The status of a Mailbox whose MailDomain exists is written by that domain's reconcile,
//! which knows whether the Mailbox made it into the users database; this controller leaves
//! those alone, so the two never write the same status.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use tracing::Instrument;

use super::context::Context;
use super::error::Error;
use super::informers::MailboxObj;
use super::maildomain::{patch_mailbox_status, warning};
use super::status::{self, MailboxState};
use crate::api::Mailbox;

const KIND: &str = "Mailbox";

/// What this controller says about a Mailbox, given whether its domain is cached and readable.
/// `None`: the domain's reconcile is responsible.
pub fn orphan_state(domain: Option<Result<(), String>>) -> Option<MailboxState> {
    match domain {
        None => Some(MailboxState::DomainNotFound),
        Some(Err(e)) => Some(MailboxState::DomainInvalid(e)),
        Some(Ok(())) => None,
    }
}

pub async fn reconcile(obj: Arc<MailboxObj>, ctx: Arc<Context>) -> Result<Action, Error> {
    let mb = match &obj.0 {
        Ok(mb) => mb,
        Err(invalid) => {
            ctx.report_invalid(KIND, &Mailbox::api_version(&()), invalid)
                .await;
            return Ok(Action::await_change());
        }
    };
    let namespace = mb
        .namespace()
        .ok_or(Error::MissingMetadata("metadata.namespace"))?;
    let span = tracing::info_span!("reconcile", kind = KIND, namespace = %namespace, object = %mb.name_any());
    let _timer = ctx.metrics.reconcile(KIND);
    async {
        let domain = ctx
            .stores
            .domain(&namespace, &mb.spec.domain_ref.name)
            .map(|d| d.0.as_ref().map(|_| ()).map_err(|e| e.error.clone()));
        let Some(state) = orphan_state(domain) else {
            return Ok(Action::await_change());
        };
        let desired = status::mailbox_status(
            mb.status.as_ref(),
            mb.metadata.generation.unwrap_or(0),
            None,
            &mb.spec.domain_ref.name,
            &state,
            ctx.clock.now(),
        );
        if let Some(patch) = status::status_patch(mb.status.as_ref(), &desired) {
            let warn = warning(mb.status.as_ref(), &desired, &state);
            patch_mailbox_status(&ctx, mb, &patch, warn).await?;
        }
        Ok(Action::await_change())
    }
    .instrument(span)
    .await
}

pub fn error_policy(obj: Arc<MailboxObj>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!(
        "mailbox:{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    );
    let delay = ctx.failures.record(&key);
    ctx.metrics.reconcile_failed(KIND, error.metric_label());
    tracing::warn!(mailbox = %key, error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_orphans_are_reported_here() {
        assert_eq!(orphan_state(None), Some(MailboxState::DomainNotFound));
        assert_eq!(
            orphan_state(Some(Err("bad".into()))),
            Some(MailboxState::DomainInvalid("bad".into()))
        );
        assert_eq!(orphan_state(Some(Ok(()))), None);
    }
}
