//! Watches and caches: one watch per kind, each feeding a cache (reflector store) and the
//! triggers of the MailDomain and Mailbox controllers.
//!
//! MailDomains and Mailboxes are watched through [`DeserializeGuard`], so an object that does
//! not deserialize reaches its controller as an error value (which reports it) instead of
//! failing the whole watch. Children are watched as metadata only, selected by
//! [`DOMAIN_LABEL`]; StatefulSets in full, for their readiness. Secrets are watched as metadata
//! only (their data is read on demand and cached by resourceVersion), so a password Secret
//! change reaches the MailDomains of the Mailboxes using it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use futures::channel::mpsc::{unbounded, UnboundedReceiver, UnboundedSender};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DynamicObject};
use kube::core::{DeserializeGuard, PartialObjectMeta};
use kube::runtime::reflector::{self, store::Writer, ObjectRef, Store};
use kube::runtime::watcher::{self, watcher, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource};

use super::kinds::ChildKind;
use super::mapping::{
    domain_secret_refs, labelled_domain, mailbox_domain, owning_domain, DomainKey, SecretIndex,
};
use super::metrics::Metrics;
use crate::api::{MailDomain, Mailbox};
use crate::names::{Component, COMPONENT_LABEL, DOMAIN_LABEL};

pub type DomainObj = DeserializeGuard<MailDomain>;
pub type MailboxObj = DeserializeGuard<Mailbox>;
type MetaStore = Store<PartialObjectMeta<DynamicObject>>;

/// Read access to every cache.
#[derive(Clone)]
pub struct Stores {
    pub domains: Store<DomainObj>,
    pub mailboxes: Store<MailboxObj>,
    pub secrets: Store<PartialObjectMeta<Secret>>,
    pub statefulsets: Store<StatefulSet>,
    /// Jobs and Pods of the backup CronJobs (their results feed `status.lastBackup`).
    pub backup_jobs: Store<Job>,
    /// Pods of backup runs and MTA pods.
    pub pods: Store<Pod>,
    children: Arc<HashMap<ChildKind, MetaStore>>,
    pub secret_index: Arc<RwLock<SecretIndex>>,
    pub secret_data: Arc<SecretCache>,
}

impl Stores {
    /// Waits until every cache holds a complete initial list.
    pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.domains.wait_until_ready().await?;
        self.mailboxes.wait_until_ready().await?;
        self.secrets.wait_until_ready().await?;
        self.statefulsets.wait_until_ready().await?;
        self.backup_jobs.wait_until_ready().await?;
        self.pods.wait_until_ready().await?;
        for store in self.children.values() {
            store.wait_until_ready().await?;
        }
        Ok(())
    }

    /// Whether `kind` is watched: built-in kinds always, optional ones when their CRD was
    /// installed at start-up.
    pub fn watches(&self, kind: ChildKind) -> bool {
        matches!(kind, ChildKind::Secret | ChildKind::StatefulSet)
            || self.children.contains_key(&kind)
    }

    /// Metadata of a child as last seen by its watch.
    pub fn child_meta(&self, kind: ChildKind, namespace: &str, name: &str) -> Option<ObjectMeta> {
        match kind {
            ChildKind::Secret => self
                .secrets
                .get(&ObjectRef::new(name).within(namespace))
                .map(|s| s.metadata.clone()),
            ChildKind::StatefulSet => self
                .statefulsets
                .get(&ObjectRef::new(name).within(namespace))
                .map(|s| s.metadata.clone()),
            other => {
                let store = self.children.get(&other)?;
                store
                    .get(&ObjectRef::new_with(name, other.api_resource()).within(namespace))
                    .map(|o| o.metadata.clone())
            }
        }
    }

    /// Every cached object labelled as a child of `namespace/domain`, of every owned kind.
    pub fn children_of(&self, namespace: &str, domain: &str) -> Vec<(ChildKind, ObjectMeta)> {
        let belongs = |m: &ObjectMeta| {
            m.namespace.as_deref() == Some(namespace)
                && m.labels
                    .as_ref()
                    .and_then(|l| l.get(DOMAIN_LABEL))
                    .is_some_and(|d| d == domain)
        };
        let mut out: Vec<(ChildKind, ObjectMeta)> = Vec::new();
        out.extend(
            self.secrets
                .state()
                .iter()
                .filter(|s| belongs(&s.metadata))
                .map(|s| (ChildKind::Secret, s.metadata.clone())),
        );
        out.extend(
            self.statefulsets
                .state()
                .iter()
                .filter(|s| belongs(&s.metadata))
                .map(|s| (ChildKind::StatefulSet, s.metadata.clone())),
        );
        for (kind, store) in self.children.iter() {
            out.extend(
                store
                    .state()
                    .iter()
                    .filter(|o| belongs(&o.metadata))
                    .map(|o| (*kind, o.metadata.clone())),
            );
        }
        out
    }

    /// The backup Jobs and their Pods of `namespace/domain`.
    pub fn backup_runs(&self, namespace: &str, domain: &str) -> (Vec<Job>, Vec<Pod>) {
        let jobs = self
            .backup_jobs
            .state()
            .iter()
            .filter(|j| of_domain(&j.metadata, namespace, domain))
            .map(|j| (**j).clone())
            .collect();
        (jobs, self.pods_of(namespace, domain, Component::Backup))
    }

    /// The Pods of `component` (backup runs, MTA pods) of `namespace/domain`.
    pub fn pods_of(&self, namespace: &str, domain: &str, component: Component) -> Vec<Pod> {
        self.pods
            .state()
            .iter()
            .filter(|p| {
                of_domain(&p.metadata, namespace, domain)
                    && p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(COMPONENT_LABEL))
                        .is_some_and(|c| c == component.as_str())
            })
            .map(|p| (**p).clone())
            .collect()
    }

    pub fn statefulset(&self, namespace: &str, name: &str) -> Option<Arc<StatefulSet>> {
        self.statefulsets
            .get(&ObjectRef::new(name).within(namespace))
    }

    /// The Mailboxes of `namespace/domain` that deserialized, sorted by name.
    pub fn mailboxes_of(&self, namespace: &str, domain: &str) -> Vec<Arc<MailboxObj>> {
        let mut out = self.mailboxes.state_filter(|m| match &m.0 {
            Ok(mb) => {
                mb.metadata.namespace.as_deref() == Some(namespace)
                    && mb.spec.domain_ref.name == domain
            }
            Err(_) => false,
        });
        out.sort_by(|a, b| a.meta().name.cmp(&b.meta().name));
        out
    }

    pub fn domain(&self, namespace: &str, name: &str) -> Option<Arc<DomainObj>> {
        self.domains.get(&ObjectRef::new(name).within(namespace))
    }

    pub fn secret_meta(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<Arc<PartialObjectMeta<Secret>>> {
        self.secrets.get(&ObjectRef::new(name).within(namespace))
    }
}

/// Secret contents read on demand, kept per resourceVersion so an unchanged Secret is read
/// from the API once.
#[derive(Default)]
pub struct SecretCache(Mutex<HashMap<ObjectKey, (String, Arc<Secret>)>>);

/// Namespace and name.
type ObjectKey = (String, String);

impl SecretCache {
    /// The cached Secret if it is at `resource_version`.
    pub fn get(&self, namespace: &str, name: &str, resource_version: &str) -> Option<Arc<Secret>> {
        let map = self.0.lock().expect("secret cache lock");
        map.get(&(namespace.to_string(), name.to_string()))
            .filter(|(rv, _)| rv == resource_version)
            .map(|(_, s)| s.clone())
    }

    pub fn put(&self, mut secret: Secret) -> Arc<Secret> {
        slim(&mut secret);
        let secret = Arc::new(secret);
        if let (Some(ns), Some(name), Some(rv)) = (
            secret.metadata.namespace.clone(),
            secret.metadata.name.clone(),
            secret.metadata.resource_version.clone(),
        ) {
            self.0
                .lock()
                .expect("secret cache lock")
                .insert((ns, name), (rv, secret.clone()));
        }
        secret
    }

    pub fn forget(&self, namespace: &str, name: &str) {
        self.0
            .lock()
            .expect("secret cache lock")
            .remove(&(namespace.to_string(), name.to_string()));
    }
}

/// Streams that make the controllers reconcile.
pub struct Triggers {
    /// MailDomains, new or with a new generation.
    pub domain_objects: UnboundedReceiver<Result<DomainObj, watcher::Error>>,
    /// MailDomains to reconcile because something they depend on changed.
    pub domain_refs: UnboundedReceiver<ObjectRef<DomainObj>>,
    /// Mailboxes, new or with a new generation.
    pub mailbox_objects: UnboundedReceiver<Result<MailboxObj, watcher::Error>>,
    /// Mailboxes to look at again because their MailDomain appeared or disappeared.
    pub mailbox_refs: UnboundedReceiver<ObjectRef<MailboxObj>>,
}

#[derive(Clone)]
struct Senders {
    domain_objects: UnboundedSender<Result<DomainObj, watcher::Error>>,
    domain_refs: UnboundedSender<ObjectRef<DomainObj>>,
    mailbox_objects: UnboundedSender<Result<MailboxObj, watcher::Error>>,
    mailbox_refs: UnboundedSender<ObjectRef<MailboxObj>>,
}

impl Senders {
    fn domain(&self, key: &DomainKey) {
        let _ = self
            .domain_refs
            .unbounded_send(ObjectRef::new(&key.name).within(&key.namespace));
    }
    fn all_domains(&self, domains: &Store<DomainObj>) {
        for d in domains.state() {
            if let (Some(ns), Some(name)) = (&d.meta().namespace, &d.meta().name) {
                self.domain(&DomainKey::new(ns, name));
            }
        }
    }
}

/// Where to watch: one namespace or all.
fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

fn key_of(meta: &ObjectMeta) -> Option<(String, String)> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

/// What identifies a spec change: the generation, or the resourceVersion where none is kept.
fn spec_version(meta: &ObjectMeta) -> String {
    super::apply::change_token(meta)
}

/// Starts nothing yet: returns the caches, the trigger streams, and the future that runs every
/// watch (poll it for as long as the controllers run).
pub fn build(
    client: &Client,
    namespace: Option<&str>,
    optional: &[ChildKind],
    metrics: Arc<Metrics>,
) -> (Stores, Triggers, BoxFuture<'static, ()>) {
    let (domain_objects_tx, domain_objects) = unbounded();
    let (domain_refs_tx, domain_refs) = unbounded();
    let (mailbox_objects_tx, mailbox_objects) = unbounded();
    let (mailbox_refs_tx, mailbox_refs) = unbounded();
    let tx = Senders {
        domain_objects: domain_objects_tx,
        domain_refs: domain_refs_tx,
        mailbox_objects: mailbox_objects_tx,
        mailbox_refs: mailbox_refs_tx,
    };

    let domain_writer: Writer<DomainObj> = Writer::default();
    let mailbox_writer: Writer<MailboxObj> = Writer::default();
    let secret_writer: Writer<PartialObjectMeta<Secret>> = Writer::default();
    let sts_writer: Writer<StatefulSet> = Writer::default();
    let job_writer: Writer<Job> = Writer::default();
    let pod_writer: Writer<Pod> = Writer::default();
    let secret_index = Arc::new(RwLock::new(SecretIndex::default()));
    let secret_data = Arc::new(SecretCache::default());

    let mut child_stores = HashMap::new();
    let mut tasks: Vec<BoxFuture<'static, ()>> = Vec::new();
    let owned_selector = watcher::Config::default().labels(DOMAIN_LABEL);

    for kind in ChildKind::WATCHED
        .into_iter()
        .chain(optional.iter().copied())
    {
        if matches!(kind, ChildKind::Secret | ChildKind::StatefulSet) {
            continue;
        }
        let ar = kind.api_resource();
        let writer: Writer<PartialObjectMeta<DynamicObject>> = Writer::new(ar.clone());
        child_stores.insert(kind, writer.as_reader());
        let api: Api<PartialObjectMeta<DynamicObject>> = match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
            None => Api::all_with(client.clone(), &ar),
        };
        let stream = watcher(api, owned_selector.clone())
            .modify(slim)
            .default_backoff();
        let tx = tx.clone();
        let domains = domain_writer.as_reader();
        tasks.push(
            drive(
                kind.as_str(),
                reflector::reflector(writer, stream),
                move |ev| on_child_event(&tx, &domains, ev.map(|o| &o.metadata)),
            )
            .boxed(),
        );
    }

    let stores = Stores {
        domains: domain_writer.as_reader(),
        mailboxes: mailbox_writer.as_reader(),
        secrets: secret_writer.as_reader(),
        statefulsets: sts_writer.as_reader(),
        backup_jobs: job_writer.as_reader(),
        pods: pod_writer.as_reader(),
        children: Arc::new(child_stores),
        secret_index: secret_index.clone(),
        secret_data: secret_data.clone(),
    };

    // Backup Jobs (a finished run updates the domain's status) and their Pods (for the result
    // line each leaves as its termination message); MTA pods (their continuity agents report
    // the upstream's availability).
    {
        let backup_selector = watcher::Config::default().labels(&format!(
            "{DOMAIN_LABEL},{COMPONENT_LABEL}={}",
            Component::Backup.as_str()
        ));
        let pod_selector = watcher::Config::default().labels(&format!(
            "{DOMAIN_LABEL},{COMPONENT_LABEL} in ({},{})",
            Component::Backup.as_str(),
            Component::Mta.as_str()
        ));
        let stream = watcher(api::<Job>(client, namespace), backup_selector)
            .modify(slim)
            .default_backoff();
        let tx = tx.clone();
        tasks.push(
            drive("Job", reflector::reflector(job_writer, stream), move |ev| {
                if let Some(domain) = live_meta(ev.map(|o| &o.metadata)).and_then(labelled_domain) {
                    tx.domain(&domain);
                }
            })
            .boxed(),
        );
        let stream = watcher(api::<Pod>(client, namespace), pod_selector)
            .modify(slim)
            .default_backoff();
        tasks.push(drive("Pod", reflector::reflector(pod_writer, stream), |_| {}).boxed());
    }

    // StatefulSets: full objects, for readiness.
    {
        let stream = watcher(
            api::<StatefulSet>(client, namespace),
            owned_selector.clone(),
        )
        .modify(slim)
        .default_backoff();
        let tx = tx.clone();
        let domains = stores.domains.clone();
        tasks.push(
            drive(
                "StatefulSet",
                reflector::reflector(sts_writer, stream),
                move |ev| on_child_event(&tx, &domains, ev.map(|o| &o.metadata)),
            )
            .boxed(),
        );
    }

    // Secrets: metadata of all, for children and for password Secrets.
    {
        let stream = watcher(
            api::<PartialObjectMeta<Secret>>(client, namespace),
            watcher::Config::default(),
        )
        .modify(slim)
        .default_backoff();
        let tx = tx.clone();
        let domains = stores.domains.clone();
        let index = secret_index.clone();
        let cache = secret_data.clone();
        tasks.push(
            drive(
                "Secret",
                reflector::reflector(secret_writer, stream),
                move |ev| {
                    if let Event::Delete(s) = ev {
                        if let Some((ns, name)) = key_of(&s.metadata) {
                            cache.forget(&ns, &name);
                        }
                    }
                    let Some(meta) = live_meta(ev.map(|o| &o.metadata)) else {
                        if matches!(ev, Event::InitDone) {
                            tx.all_domains(&domains);
                        }
                        return;
                    };
                    let Some((ns, name)) = key_of(meta) else {
                        return;
                    };
                    if let Some(owner) = owning_domain(meta) {
                        tx.domain(&owner);
                    }
                    for key in index
                        .read()
                        .expect("secret index lock")
                        .domains_for_secret(&ns, &name)
                    {
                        tx.domain(&key);
                    }
                    for d in domains.state() {
                        if let Ok(md) = &d.0 {
                            if md.metadata.namespace.as_deref() == Some(ns.as_str())
                                && domain_secret_refs(md).contains(&name)
                            {
                                tx.domain(&DomainKey::new(
                                    &ns,
                                    md.metadata.name.clone().unwrap_or_default(),
                                ));
                            }
                        }
                    }
                },
            )
            .boxed(),
        );
    }

    // Mailboxes.
    {
        let stream = watcher(
            api::<MailboxObj>(client, namespace),
            watcher::Config::default(),
        )
        .modify(slim)
        .default_backoff();
        let tx = tx.clone();
        let index = secret_index.clone();
        let store = stores.mailboxes.clone();
        let metrics = metrics.clone();
        let mut seen: HashMap<(String, String), String> = HashMap::new();
        tasks.push(
            drive(
                "Mailbox",
                reflector::reflector(mailbox_writer, stream),
                move |ev| {
                    metrics.managed_mailboxes.set(store.len() as i64);
                    match ev {
                        Event::Init => index.write().expect("secret index lock").clear(),
                        Event::Apply(obj) | Event::InitApply(obj) => {
                            let live = matches!(ev, Event::Apply(_));
                            if let Ok(mb) = &obj.0 {
                                index.write().expect("secret index lock").upsert(mb);
                            }
                            let Some(key) = key_of(obj.meta()) else {
                                return;
                            };
                            let version = spec_version(obj.meta());
                            if seen.get(&key) == Some(&version) {
                                return;
                            }
                            seen.insert(key, version);
                            let _ = tx.mailbox_objects.unbounded_send(Ok(obj.clone()));
                            if live {
                                if let Some(domain) = obj.0.as_ref().ok().and_then(mailbox_domain) {
                                    tx.domain(&domain);
                                }
                            }
                        }
                        Event::Delete(obj) => {
                            if let Some(key) = key_of(obj.meta()) {
                                index
                                    .write()
                                    .expect("secret index lock")
                                    .remove(&key.0, &key.1);
                                seen.remove(&key);
                            }
                            if let Some(domain) = obj.0.as_ref().ok().and_then(mailbox_domain) {
                                tx.domain(&domain);
                            }
                        }
                        Event::InitDone => {
                            let present: HashSet<(String, String)> = store
                                .state()
                                .iter()
                                .filter_map(|m| key_of(m.meta()))
                                .collect();
                            seen.retain(|k, _| present.contains(k));
                        }
                    }
                },
            )
            .boxed(),
        );
    }

    // MailDomains.
    {
        let stream = watcher(
            api::<DomainObj>(client, namespace),
            watcher::Config::default(),
        )
        .modify(slim)
        .default_backoff();
        let tx = tx.clone();
        let mailboxes = stores.mailboxes.clone();
        let store = stores.domains.clone();
        let mut seen: HashMap<(String, String), String> = HashMap::new();
        let refresh_mailboxes = move |tx: &Senders, ns: &str, name: &str| {
            for m in mailboxes.state() {
                if let Ok(mb) = &m.0 {
                    if mb.metadata.namespace.as_deref() == Some(ns)
                        && mb.spec.domain_ref.name == name
                    {
                        let _ = tx.mailbox_refs.unbounded_send(
                            ObjectRef::new(&mb.metadata.name.clone().unwrap_or_default())
                                .within(ns),
                        );
                    }
                }
            }
        };
        tasks.push(
            drive(
                "MailDomain",
                reflector::reflector(domain_writer, stream),
                move |ev| {
                    metrics.managed_domains.set(store.len() as i64);
                    match ev {
                        Event::Apply(obj) | Event::InitApply(obj) => {
                            let Some(key) = key_of(obj.meta()) else {
                                return;
                            };
                            let version = spec_version(obj.meta());
                            let previous = seen.insert(key.clone(), version.clone());
                            if previous.as_ref() == Some(&version) {
                                return;
                            }
                            let _ = tx.domain_objects.unbounded_send(Ok(obj.clone()));
                            if previous.is_none() && matches!(ev, Event::Apply(_)) {
                                refresh_mailboxes(&tx, &key.0, &key.1);
                            }
                        }
                        Event::Delete(obj) => {
                            if let Some(key) = key_of(obj.meta()) {
                                seen.remove(&key);
                                metrics.forget_domain(&key.0, &key.1);
                                refresh_mailboxes(&tx, &key.0, &key.1);
                            }
                        }
                        Event::Init => {}
                        Event::InitDone => {
                            let present: HashSet<(String, String)> = store
                                .state()
                                .iter()
                                .filter_map(|d| key_of(d.meta()))
                                .collect();
                            let gone: Vec<(String, String)> = seen
                                .keys()
                                .filter(|k| !present.contains(*k))
                                .cloned()
                                .collect();
                            for key in gone {
                                seen.remove(&key);
                                metrics.forget_domain(&key.0, &key.1);
                                refresh_mailboxes(&tx, &key.0, &key.1);
                            }
                        }
                    }
                },
            )
            .boxed(),
        );
    }

    let all = futures::future::join_all(tasks).map(|_| ()).boxed();
    (
        stores,
        Triggers {
            domain_objects,
            domain_refs,
            mailbox_objects,
            mailbox_refs,
        },
        all,
    )
}

/// Drops what the operator never reads from cached objects: `managedFields`, and kubectl's
/// last-applied annotation (a full copy of the object — for a Secret, its data).
/// Whether an object is labelled as one of `namespace/domain`'s.
fn of_domain(m: &ObjectMeta, namespace: &str, domain: &str) -> bool {
    m.namespace.as_deref() == Some(namespace)
        && m.labels
            .as_ref()
            .and_then(|l| l.get(DOMAIN_LABEL))
            .is_some_and(|d| d == domain)
}

fn slim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The metadata of a live (post-initial-list) change, if the event is one.
fn live_meta(ev: Event<&ObjectMeta>) -> Option<&ObjectMeta> {
    match ev {
        Event::Apply(m) | Event::Delete(m) => Some(m),
        Event::Init | Event::InitApply(_) | Event::InitDone => None,
    }
}

fn on_child_event(tx: &Senders, domains: &Store<DomainObj>, ev: Event<&ObjectMeta>) {
    if matches!(ev, Event::InitDone) {
        // A relist may have hidden changes: look at every domain again (cheap when nothing changed).
        tx.all_domains(domains);
        return;
    }
    if let Some(owner) = live_meta(ev).and_then(owning_domain) {
        tx.domain(&owner);
    }
}

/// Runs one watch: applies each event to its cache (done by the reflector), then hands it to
/// `handle`. Watch errors are logged and retried with backoff; they never end the stream.
async fn drive<K, S>(kind: &'static str, stream: S, mut handle: impl FnMut(&Event<K>))
where
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(ev) => handle(&ev),
            Err(e) => tracing::warn!(kind, error = %e, "watch failed; retrying"),
        }
    }
}

/// `Event::map` for a borrowed event.
trait EventRef<K: 'static> {
    fn map<'a, T>(&'a self, f: impl Fn(&'a K) -> &'a T) -> Event<&'a T>;
}

impl<K: 'static> EventRef<K> for Event<K> {
    fn map<'a, T>(&'a self, f: impl Fn(&'a K) -> &'a T) -> Event<&'a T> {
        match self {
            Event::Apply(o) => Event::Apply(f(o)),
            Event::Delete(o) => Event::Delete(f(o)),
            Event::Init => Event::Init,
            Event::InitApply(o) => Event::InitApply(f(o)),
            Event::InitDone => Event::InitDone,
        }
    }
}
