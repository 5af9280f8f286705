//! NetworkPolicies: the public mail ports are open to everyone; every internal port only to
//! the pods of this MailDomain that use it (and Prometheus for metrics).
//!
//! Egress is not restricted: an MTA delivers to any host on the Internet.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::service::{self, NamedPort};
use super::Domain;
use crate::names::Component;

/// Pods with this label set to `"true"`, in any namespace, may scrape the metrics ports
/// (label the Prometheus pods with it).
pub const METRICS_SCRAPER_LABEL: &str = "postwarden.dev/metrics-scraper";

/// The label (`"true"`) of the operator's pods (the chart sets it): they read the continuity
/// agents' `/status`.
pub const OPERATOR_LABEL: &str = "postwarden.dev/operator";

/// NetworkPolicy `<md>-mta`: SMTP and submission from anywhere; the queue exporter's,
/// Rspamd's and the continuity agent's metrics from this domain's pods and metrics scrapers,
/// the continuity agent's port also from the operator; the milter (a UNIX socket) and the auth
/// sidecar (loopback) are out of the network's reach and get no rule.
pub fn build_mta(domain: &Domain) -> NetworkPolicy {
    let ports = domain.layout().ports;
    let mut rules = vec![
        open(&service::smtp_ports(&ports)),
        from(
            metrics_peers(domain),
            &service::mta_metrics_ports(domain.spec, &ports),
        ),
    ];
    if domain.spec.continuity.is_some() {
        rules.push(from(
            vec![labelled(OPERATOR_LABEL)],
            &[service::continuity_metrics_port(&ports)],
        ));
    }
    policy(domain, domain.names.mta(), Component::Mta, rules)
}

/// NetworkPolicy `<md>-imap`: IMAP and IMAPS from anywhere; LMTP from the MTA pods;
/// doveadm from the other IMAP pod (replication) and the backup jobs; metrics from this
/// domain's pods and metrics scrapers.
pub fn build_imap(domain: &Domain) -> NetworkPolicy {
    let ports = domain.layout().ports;
    let [lmtp, doveadm] = service::imap_internal_ports(&ports);
    policy(
        domain,
        domain.names.imap(),
        Component::Imap,
        vec![
            open(&service::imap_ports(&ports)),
            from(vec![pods(domain, Component::Mta)], &[lmtp]),
            from(
                vec![
                    pods(domain, Component::Imap),
                    pods(domain, Component::Backup),
                ],
                &[doveadm],
            ),
            from(
                metrics_peers(domain),
                &service::imap_metrics_ports(&domain.layout()),
            ),
        ],
    )
}

fn policy(
    domain: &Domain,
    name: String,
    component: Component,
    ingress: Vec<NetworkPolicyIngressRule>,
) -> NetworkPolicy {
    NetworkPolicy {
        metadata: domain.meta(name, component),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(domain.label_selector(component)),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            ..NetworkPolicySpec::default()
        }),
    }
}

fn tcp(ports: &[NamedPort]) -> Vec<NetworkPolicyPort> {
    ports
        .iter()
        .map(|p| NetworkPolicyPort {
            port: Some(IntOrString::Int(p.port.into())),
            protocol: Some("TCP".into()),
            ..NetworkPolicyPort::default()
        })
        .collect()
}

fn open(ports: &[NamedPort]) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        from: None,
        ports: Some(tcp(ports)),
    }
}

fn from(peers: Vec<NetworkPolicyPeer>, ports: &[NamedPort]) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        from: Some(peers),
        ports: Some(tcp(ports)),
    }
}

/// The pods of `component` of this MailDomain, in its namespace.
fn pods(domain: &Domain, component: Component) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(domain.label_selector(component)),
        ..NetworkPolicyPeer::default()
    }
}

fn metrics_peers(domain: &Domain) -> Vec<NetworkPolicyPeer> {
    let own = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(
                [(
                    crate::names::DOMAIN_LABEL.to_string(),
                    domain.name.to_string(),
                )]
                .into(),
            ),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    };
    vec![own, labelled(METRICS_SCRAPER_LABEL)]
}

/// Pods in any namespace with `label: "true"`.
fn labelled(label: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector::default()),
        pod_selector: Some(LabelSelector {
            match_labels: Some([(label.to_string(), "true".to_string())].into()),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing;

    /// (port, open to everyone, components allowed by selector)
    fn rules(np: &NetworkPolicy) -> Vec<(i32, bool, Vec<String>)> {
        let mut out = Vec::new();
        for rule in np.spec.as_ref().unwrap().ingress.as_ref().unwrap() {
            for port in rule.ports.as_ref().unwrap() {
                let IntOrString::Int(n) = port.port.clone().unwrap() else {
                    panic!("numeric ports")
                };
                let comps = rule
                    .from
                    .iter()
                    .flatten()
                    .filter_map(|p| p.pod_selector.as_ref()?.match_labels.as_ref())
                    .map(|l| {
                        if l.contains_key(METRICS_SCRAPER_LABEL) {
                            "scraper".to_string()
                        } else if l.contains_key(OPERATOR_LABEL) {
                            "operator".to_string()
                        } else {
                            l.get("app.kubernetes.io/component")
                                .cloned()
                                .unwrap_or_else(|| "domain".into())
                        }
                    })
                    .collect();
                out.push((n, rule.from.is_none(), comps));
            }
        }
        out
    }

    #[test]
    fn only_public_ports_are_open_to_everyone() {
        let md = testing::quickstart_domain();
        let domain = testing::domain(&md);
        let open: Vec<i32> = rules(&build_imap(&domain))
            .into_iter()
            .chain(rules(&build_mta(&domain)))
            .filter(|r| r.1)
            .map(|r| r.0)
            .collect();
        assert_eq!(open, [143, 993, 25, 465, 587]);
    }

    #[test]
    fn internal_imap_ports_admit_only_the_domains_pods_that_use_them() {
        let md = testing::quickstart_domain();
        let domain = testing::domain(&md);
        let rules = rules(&build_imap(&domain));
        let peers = |port: i32| rules.iter().find(|r| r.0 == port).unwrap().2.clone();
        assert_eq!(peers(24), ["mta"]);
        assert_eq!(peers(12346), ["imap", "backup"]);
        assert_eq!(peers(9900), ["domain", "scraper"]);
        assert_eq!(peers(9901), ["domain", "scraper"]);
        let np = build_imap(&domain);
        for rule in np.spec.unwrap().ingress.unwrap() {
            for peer in rule.from.into_iter().flatten() {
                let labels = peer.pod_selector.unwrap().match_labels.unwrap();
                // Every in-namespace peer is pinned to this MailDomain.
                if peer.namespace_selector.is_none() {
                    assert_eq!(labels[crate::names::DOMAIN_LABEL], "example-com");
                }
            }
        }
    }

    #[test]
    fn the_operator_reaches_only_the_continuity_agent() {
        let plain = testing::quickstart_domain();
        let mta = rules(&build_mta(&testing::domain(&plain)));
        assert!(mta.iter().all(|r| !r.2.contains(&"operator".to_string())));
        let mut md = testing::quickstart_domain();
        md.spec.continuity = Some(
            serde_json::from_value(serde_json::json!({
                "upstream": {"hosts": ["example-com.mail.protection.outlook.com"]}
            }))
            .unwrap(),
        );
        let mta = rules(&build_mta(&testing::domain(&md)));
        let peers = |port: i32| -> Vec<Vec<String>> {
            mta.iter()
                .filter(|r| r.0 == port)
                .map(|r| r.2.clone())
                .collect()
        };
        assert_eq!(peers(9902), [vec!["domain", "scraper"], vec!["operator"]]);
        assert_eq!(peers(9154), [vec!["domain", "scraper"]]);
    }
}
