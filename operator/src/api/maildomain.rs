//! `MailDomain`: one email domain served by its own Postfix and Dovecot StatefulSets.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use super::continuity::ContinuitySpec;

/// Lowercase DNS name (RFC 1123 subdomain, at least two labels).
pub const DNS_NAME_PATTERN: &str =
    r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";

/// A mail domain and the mail stack that serves it.
///
/// The operator turns each MailDomain into a Postfix StatefulSet (MTA: SMTP on 25, submission on
/// 587 and 465), a Dovecot StatefulSet (IMAP 143/993, LMTP), a users database built from the
/// Mailboxes that reference it, TLS certificates, DKIM keys and, optionally, a backup CronJob.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "postwarden.dev",
    version = "v1alpha1",
    kind = "MailDomain",
    namespaced,
    status = "MailDomainStatus",
    shortname = "md",
    shortname = "maildom",
    category = "mail",
    doc = "A mail domain served by its own Postfix and Dovecot StatefulSets, with its mailboxes, certificates, DKIM keys and backups.",
    printcolumn = r#"{"name":"Domain","type":"string","jsonPath":".spec.domain"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Mailboxes","type":"integer","jsonPath":".status.mailboxes"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("size(self.metadata.name) <= 40").message("metadata.name must be at most 40 characters so the names of its StatefulSets, Services and Secrets stay within Kubernetes limits")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.continuity) || !has(self.region) || !has(self.region.role) || self.region.role == 'Primary'").message("continuity relays to the provider itself: it cannot be combined with region.role Secondary"))]
#[x_kube(validation = Rule::new("!has(self.continuity) || self.continuity.upstream.hosts.all(h, h != self.domain && h != (has(self.hostname) ? self.hostname : 'mail.' + self.domain) && !(has(self.aliasDomains) && h in self.aliasDomains))").message("continuity.upstream.hosts must name the provider, not this domain or its own mail host"))]
pub struct MailDomainSpec {
    /// The email domain served, e.g. `example.com`: a lowercase DNS name. Immutable once set,
    /// because every address, DKIM key and certificate hangs off it.
    #[schemars(length(min = 3, max = 253), regex(pattern = DNS_NAME_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.domain is immutable"))]
    pub domain: String,

    /// Further domains whose mail is delivered to the same mailboxes (`alice@alias.example`
    /// reaches `alice@example.com`). Each is a lowercase DNS name, distinct from `domain`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 3, max = 253)))]
    #[x_kube(validation = Rule::new("self.all(d, d.matches('^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\\\\.)+[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'))").message("every alias domain must be a lowercase DNS name"))]
    #[x_kube(validation = Rule::new("self.all(d, self.exists_one(e, e == d))").message("alias domains must be unique"))]
    pub alias_domains: Vec<String>,

    /// Host name of the mail server: the MX target, the SMTP banner and the name on the TLS
    /// certificate. Defaults to `mail.<domain>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 253), regex(pattern = DNS_NAME_PATTERN))]
    pub hostname: Option<String>,

    /// The Postfix MTA: SMTP on 25, submission with STARTTLS on 587 and implicit TLS on 465.
    #[serde(default)]
    pub mta: MtaSpec,

    /// The Dovecot IMAP servers: IMAP with STARTTLS on 143, IMAPS on 993, and LMTP delivery.
    #[serde(default)]
    pub imap: ImapSpec,

    /// How the serving certificate is obtained. Without any field set, an internal CA managed by
    /// the operator issues and rotates it.
    #[serde(default)]
    pub tls: TlsSpec,

    /// DKIM signing keys and their rotation.
    #[serde(default)]
    pub dkim: DkimSpec,

    /// Scheduled backups of every mailbox. No backups are taken when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,

    /// Where the mail pods run.
    #[serde(default)]
    pub placement: PlacementSpec,

    /// This cluster's role when the domain is served from more than one region.
    #[serde(default)]
    pub region: RegionSpec,

    /// Published sender policies (SPF, DMARC, MTA-STS, TLS-RPT).
    #[serde(default)]
    pub policy: PolicySpec,

    /// Inbound spam filtering.
    #[serde(default)]
    pub spam: SpamSpec,

    /// DNS publishing options.
    #[serde(default)]
    pub dns: DnsSpec,

    /// Continuity for a hosted mail provider: this stack is the domain's secondary MX, relays
    /// to the provider and keeps mail readable here while the provider is down. Without it the
    /// stack is the domain's mail server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuity: Option<ContinuitySpec>,
}

/// Postfix MTA settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MtaSpec {
    /// Number of Postfix pods. Two or more keep mail flowing through a node failure.
    #[serde(default = "default_mta_replicas")]
    #[schemars(range(min = 1, max = 10))]
    pub replicas: i32,

    /// The per-pod volume that holds the mail queue, so a restarted pod resumes its queue.
    #[serde(default = "StorageSpec::queue")]
    pub storage: StorageSpec,

    /// Largest message accepted, as a quantity (e.g. `25Mi`). Between 1Mi and 1Gi.
    #[serde(default = "default_message_size_limit")]
    pub message_size_limit: Quantity,

    /// CPU and memory requests and limits of the Postfix container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Container image with Postfix and the mail filter; defaults to the operator's release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// How the SMTP Service is exposed.
    #[serde(default = "default_mta_service")]
    pub service_type: ServiceType,

    /// Expect the HAProxy PROXY protocol (v1/v2) on the public ports so Postfix sees real
    /// client addresses behind a load balancer that sends it. Only enable when every
    /// connection comes through such a load balancer.
    #[serde(default)]
    pub proxy_protocol: bool,

    /// Annotations for the SMTP Service (load balancer settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_annotations: BTreeMap<String, String>,
}

impl Default for MtaSpec {
    fn default() -> Self {
        Self {
            replicas: default_mta_replicas(),
            storage: StorageSpec::queue(),
            message_size_limit: default_message_size_limit(),
            resources: None,
            image: None,
            service_type: default_mta_service(),
            proxy_protocol: false,
            service_annotations: BTreeMap::new(),
        }
    }
}

fn default_mta_replicas() -> i32 {
    2
}
fn default_message_size_limit() -> Quantity {
    Quantity("25Mi".into())
}
fn default_mta_service() -> ServiceType {
    ServiceType::LoadBalancer
}

/// Dovecot IMAP settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImapSpec {
    /// Number of Dovecot pods, 1 to 5. With more than one, every pod holds all the mail and
    /// replicates each change to every other pod.
    #[serde(default = "default_imap_replicas")]
    #[schemars(range(min = 1, max = 5))]
    pub replicas: i32,

    /// The per-pod volume that holds the mail.
    #[serde(default = "StorageSpec::mail")]
    pub storage: StorageSpec,

    /// CPU and memory requests and limits of the Dovecot container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Container image with Dovecot; defaults to the operator's release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// How the IMAP Service is exposed.
    #[serde(default = "default_imap_service")]
    pub service_type: ServiceType,

    /// Expect the HAProxy PROXY protocol on the public IMAP ports.
    #[serde(default)]
    pub proxy_protocol: bool,

    /// Annotations for the IMAP Service (load balancer settings).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_annotations: BTreeMap<String, String>,
}

impl Default for ImapSpec {
    fn default() -> Self {
        Self {
            replicas: default_imap_replicas(),
            storage: StorageSpec::mail(),
            resources: None,
            image: None,
            service_type: default_imap_service(),
            proxy_protocol: false,
            service_annotations: BTreeMap::new(),
        }
    }
}

fn default_imap_replicas() -> i32 {
    2
}
fn default_imap_service() -> ServiceType {
    ServiceType::LoadBalancer
}

/// Kubernetes Service type of a public mail Service.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// A persistent volume claimed per pod. The operator never deletes these claims.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Requested size, e.g. `10Gi`.
    pub size: Quantity,

    /// StorageClass of the claims; the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

impl StorageSpec {
    fn queue() -> Self {
        Self {
            size: Quantity("1Gi".into()),
            storage_class_name: None,
        }
    }
    fn mail() -> Self {
        Self {
            size: Quantity("10Gi".into()),
            storage_class_name: None,
        }
    }
}

/// Where the serving certificate comes from: the internal CA (default), a cert-manager issuer,
/// or a Secret you manage. At most one of `certManager` and `secretName` may be set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.certManager) && has(self.secretName))").message("set at most one of tls.certManager and tls.secretName"))]
pub struct TlsSpec {
    /// Have cert-manager issue the certificate: the operator creates a cert-manager
    /// Certificate for this issuer and serves the Secret it fills.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_manager: Option<CertManagerSpec>,

    /// Serve an existing `kubernetes.io/tls` Secret (keys tls.crt, tls.key, optionally ca.crt)
    /// that you renew yourself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,

    /// Lifetime of certificates the operator or cert-manager issues, as a Go duration.
    #[serde(default = "default_cert_duration")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('24h')").message("tls.duration must be a duration of at least 24h, e.g. 2160h"))]
    pub duration: String,

    /// How long before expiry a certificate is renewed. Defaults to a third of `duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1h')").message("tls.renewBefore must be a duration of at least 1h"))]
    pub renew_before: Option<String>,
}

impl Default for TlsSpec {
    fn default() -> Self {
        Self {
            cert_manager: None,
            secret_name: None,
            duration: default_cert_duration(),
            renew_before: None,
        }
    }
}

fn default_cert_duration() -> String {
    "2160h".into()
}

/// A cert-manager issuer to request the serving certificate from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertManagerSpec {
    /// The Issuer or ClusterIssuer.
    pub issuer_ref: IssuerRef,
}

/// Reference to a cert-manager issuer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the issuer.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `Issuer` (namespaced, the default) or `ClusterIssuer`.
    #[serde(default = "default_issuer_kind")]
    #[schemars(regex(pattern = r"^(Issuer|ClusterIssuer)$"))]
    pub kind: String,
    /// API group of the issuer.
    #[serde(default = "default_issuer_group")]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".into()
}
fn default_issuer_group() -> String {
    "cert-manager.io".into()
}

/// DKIM signing of outbound mail.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DkimSpec {
    /// Key algorithm of new keys; with `dualSigning`, the primary one (its selector is
    /// `status.dkim.activeSelector`).
    #[serde(default)]
    pub algorithm: DkimAlgorithm,

    /// Also sign with a key of the other algorithm, so every message carries an RSA-2048 and an
    /// Ed25519 signature (RFC 8463): receivers that do not verify Ed25519 yet use the RSA one.
    /// Each key rotates on its own schedule; both are published in DNS.
    #[serde(default)]
    pub dual_signing: bool,

    /// Sign with a new key this often, as a Go duration (default 180 days).
    #[serde(default = "default_dkim_rotation")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('24h')").message("dkim.rotationPeriod must be a duration of at least 24h"))]
    pub rotation_period: String,

    /// How long the next key is published in DNS before signing switches to it, and how long
    /// the retired key stays published afterwards (default 7 days).
    #[serde(default = "default_dkim_overlap")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1h')").message("dkim.overlap must be a duration of at least 1h"))]
    pub overlap: String,
}

impl Default for DkimSpec {
    fn default() -> Self {
        Self {
            algorithm: DkimAlgorithm::default(),
            dual_signing: false,
            rotation_period: default_dkim_rotation(),
            overlap: default_dkim_overlap(),
        }
    }
}

fn default_dkim_rotation() -> String {
    "4320h".into()
}
fn default_dkim_overlap() -> String {
    "168h".into()
}

/// DKIM key algorithm.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DkimAlgorithm {
    /// RSA with a 2048-bit key: verified by every receiver.
    #[default]
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    /// Ed25519 (RFC 8463): short keys, not yet verified by every receiver.
    #[serde(rename = "ed25519")]
    Ed25519,
}

/// Scheduled backups.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.destination.pvc) != has(self.destination.s3)").message("backup.destination needs exactly one of pvc and s3"))]
pub struct BackupSpec {
    /// Cron schedule of the backup job, e.g. `30 2 * * *`.
    #[schemars(length(min = 9, max = 100))]
    pub schedule: String,

    /// Snapshots kept after each successful run.
    #[serde(default)]
    pub retention: RetentionSpec,

    /// Where snapshots are stored.
    pub destination: BackupDestination,

    /// Secret holding the repository encryption key under `key` (default `password`).
    /// Snapshots are encrypted at rest with it.
    pub encryption_key_secret_ref: SecretKeyRef,

    /// Pause the schedule without removing the configuration.
    #[serde(default)]
    pub suspend: bool,
}

/// Number of snapshots kept per period.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// Daily snapshots kept.
    #[serde(default = "default_keep_daily")]
    #[schemars(range(min = 0, max = 3650))]
    pub daily: i32,
    /// Weekly snapshots kept.
    #[serde(default = "default_keep_weekly")]
    #[schemars(range(min = 0, max = 520))]
    pub weekly: i32,
    /// Monthly snapshots kept.
    #[serde(default = "default_keep_monthly")]
    #[schemars(range(min = 0, max = 240))]
    pub monthly: i32,
}

impl Default for RetentionSpec {
    fn default() -> Self {
        Self {
            daily: default_keep_daily(),
            weekly: default_keep_weekly(),
            monthly: default_keep_monthly(),
        }
    }
}

fn default_keep_daily() -> i32 {
    7
}
fn default_keep_weekly() -> i32 {
    4
}
fn default_keep_monthly() -> i32 {
    6
}

/// Backup storage: a PersistentVolumeClaim or S3-compatible object storage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupDestination {
    /// An existing PersistentVolumeClaim to write the backup repository to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcDestination>,
    /// An S3-compatible bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Destination>,
}

/// A PersistentVolumeClaim backup destination.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PvcDestination {
    /// Name of the claim, in the MailDomain's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
}

/// An S3-compatible backup destination.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct S3Destination {
    /// Endpoint URL, e.g. `https://s3.eu-central-1.amazonaws.com`.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("s3.endpoint must be an http(s) URL"))]
    pub endpoint: String,
    /// Bucket name.
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,
    /// Key prefix inside the bucket; defaults to `<namespace>/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Region, when the storage needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Secret with the keys `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`.
    pub credentials_secret_ref: LocalObjectRef,
}

/// Reference to an object in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectRef {
    /// Name of the object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Reference to one key of a Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

pub(crate) fn default_secret_key() -> String {
    "password".into()
}

/// Scheduling of the mail pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PlacementSpec {
    /// Topology keys the pods of each StatefulSet are spread over (at most one pod more in
    /// any domain than in another). Spreading over hostnames is required; zones are preferred.
    #[serde(default = "default_topology_keys")]
    #[schemars(length(max = 4), inner(length(min = 1, max = 316)))]
    pub topology_keys: Vec<String>,
    /// Node labels the mail pods require.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the mail pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// PriorityClass of the mail pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

impl Default for PlacementSpec {
    fn default() -> Self {
        Self {
            topology_keys: default_topology_keys(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            priority_class_name: None,
        }
    }
}

fn default_topology_keys() -> Vec<String> {
    vec![
        "kubernetes.io/hostname".into(),
        "topology.kubernetes.io/zone".into(),
    ]
}

/// Multi-region role of this cluster for the domain.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.role == 'Primary' || has(self.peerHostname)").message("a Secondary region needs region.peerHostname"))]
pub struct RegionSpec {
    /// `Primary` receives and stores mail; a `Secondary` is a lower-priority MX that queues
    /// mail for the primary while it is unreachable.
    #[serde(default)]
    pub role: RegionRole,
    /// Host name of the other region's MTA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 253), regex(pattern = DNS_NAME_PATTERN))]
    pub peer_hostname: Option<String>,
}

impl Default for RegionSpec {
    fn default() -> Self {
        Self {
            role: RegionRole::Primary,
            peer_hostname: None,
        }
    }
}

/// Role of a region.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RegionRole {
    #[default]
    Primary,
    Secondary,
}

/// Sender policies published for the domain.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    /// SPF record settings.
    #[serde(default)]
    pub spf: SpfSpec,
    /// DMARC record settings.
    #[serde(default)]
    pub dmarc: DmarcSpec,
    /// MTA-STS policy settings.
    #[serde(default)]
    pub mta_sts: MtaStsSpec,
    /// Where TLS-RPT (RFC 8460) reports are sent, as a `mailto:` address; defaults to
    /// `tls-reports@<domain>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_report_address: Option<String>,
}

/// SPF settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SpfSpec {
    /// Further senders allowed, as SPF mechanisms, e.g. `include:_spf.example.net` or `ip4:192.0.2.0/24`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(length(min = 1, max = 255)))]
    #[x_kube(validation = Rule::new("self.all(m, m.matches('^(include:|ip4:|ip6:|a:|mx:|a$|mx$)[^ ]*$'))").message("spf.include entries must be SPF mechanisms (include:, ip4:, ip6:, a, mx)"))]
    pub include: Vec<String>,
}

/// DMARC settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DmarcSpec {
    /// What receivers do with mail that fails DMARC.
    #[serde(default)]
    pub policy: DmarcPolicy,
    /// Percentage of failing mail the policy applies to.
    #[serde(default = "default_dmarc_percentage")]
    #[schemars(range(min = 0, max = 100))]
    pub percentage: i32,
    /// Aggregate report address; defaults to `dmarc-reports@<domain>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 254))]
    #[x_kube(validation = Rule::new("self.contains('@')").message("dmarc.reportAddress must be an email address"))]
    pub report_address: Option<String>,
}

impl Default for DmarcSpec {
    fn default() -> Self {
        Self {
            policy: DmarcPolicy::default(),
            percentage: default_dmarc_percentage(),
            report_address: None,
        }
    }
}

fn default_dmarc_percentage() -> i32 {
    100
}

/// DMARC policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DmarcPolicy {
    None,
    #[default]
    Quarantine,
    Reject,
}

/// MTA-STS (RFC 8461) settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MtaStsSpec {
    /// Policy mode announced to sending servers.
    #[serde(default)]
    pub mode: MtaStsMode,
    /// How long senders cache the policy, in seconds.
    #[serde(default = "default_mta_sts_max_age")]
    #[schemars(range(min = 86400, max = 31557600))]
    pub max_age_seconds: i64,
}

impl Default for MtaStsSpec {
    fn default() -> Self {
        Self {
            mode: MtaStsMode::default(),
            max_age_seconds: default_mta_sts_max_age(),
        }
    }
}

fn default_mta_sts_max_age() -> i64 {
    604800
}

/// MTA-STS mode.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MtaStsMode {
    None,
    #[default]
    Testing,
    Enforce,
}

impl MtaStsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            MtaStsMode::None => "none",
            MtaStsMode::Testing => "testing",
            MtaStsMode::Enforce => "enforce",
        }
    }
}

/// Inbound spam filtering (Rspamd).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.addHeaderScore < self.rejectScore").message("spam.addHeaderScore must be below spam.rejectScore"))]
pub struct SpamSpec {
    /// Filter inbound mail.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Score at and above which a message is marked with an `X-Spam` header.
    #[serde(default = "default_add_header_score")]
    #[schemars(range(min = 1, max = 100))]
    pub add_header_score: i32,
    /// Score at and above which a message is rejected at SMTP time.
    #[serde(default = "default_reject_score")]
    #[schemars(range(min = 1, max = 100))]
    pub reject_score: i32,
}

impl Default for SpamSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            add_header_score: default_add_header_score(),
            reject_score: default_reject_score(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_add_header_score() -> i32 {
    6
}
fn default_reject_score() -> i32 {
    15
}

/// DNS publishing.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DnsSpec {
    /// Also create an external-dns `DNSEndpoint` holding the records, for external-dns to publish.
    #[serde(default)]
    pub external_dns: bool,
    /// TTL of the published records, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 60, max = 86400))]
    pub ttl: Option<i64>,
}

/// Observed state of a MailDomain.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MailDomainStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded, CertificateReady, DkimReady, BackupHealthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Number of Mailboxes of this domain in the users database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailboxes: Option<i32>,
    /// The exact DNS records to publish for the domain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_records: Vec<DnsRecord>,
    /// The serving certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateStatus>,
    /// DKIM selectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dkim: Option<DkimStatus>,
    /// The most recent backup run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<BackupStatus>,
}

/// One DNS resource record.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DnsRecord {
    /// Fully qualified owner name, without the trailing dot.
    pub name: String,
    /// Record type: MX, TXT, SRV, CNAME, A.
    #[serde(rename = "type")]
    pub record_type: String,
    /// Time to live in seconds.
    pub ttl: i64,
    /// Record data in zone-file presentation form (TXT data already split into quoted strings).
    pub value: String,
    /// What the record is for and what else it needs (e.g. the MTA-STS policy body and where to
    /// serve it). Not part of the record data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Serving certificate status.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// Secret that holds the certificate.
    pub secret_name: String,
    /// Expiry of the current certificate (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// When the certificate will be renewed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<String>,
}

/// DKIM selector status.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DkimStatus {
    /// Selector outbound mail is signed with (of the primary algorithm with dual signing).
    pub active_selector: String,
    /// Every selector outbound mail is signed with: two with dual signing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    pub signing_selectors: Vec<String>,
    /// Selector published ahead of the next rotation, once generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_selector: Option<String>,
    /// When signing switches to the next selector (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation: Option<String>,
}

/// Result of a backup run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// When the run finished (RFC 3339).
    pub time: String,
    /// `Succeeded` or `Failed`.
    pub result: String,
    /// Mailboxes copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailboxes: Option<i64>,
    /// Bytes added to the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<i64>,
    /// Snapshot id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

impl MailDomainSpec {
    /// The MX host name: `hostname`, or `mail.<domain>`.
    pub fn mail_hostname(&self) -> String {
        self.hostname
            .clone()
            .unwrap_or_else(|| format!("mail.{}", self.domain))
    }

    /// The primary domain followed by the alias domains.
    pub fn all_domains(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.domain.as_str()).chain(self.alias_domains.iter().map(String::as_str))
    }
}
