//! Services: the public SMTP and IMAP endpoints, and the headless Services that govern the
//! StatefulSets and carry the internal ports.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Domain;
use crate::api::maildomain::ServiceType;
use crate::config::{Layout, Ports};
use crate::names::Component;

/// A named TCP port: the Service port and the container port it targets by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamedPort {
    pub name: &'static str,
    pub port: u16,
}

impl NamedPort {
    fn service_port(self) -> ServicePort {
        ServicePort {
            name: Some(self.name.into()),
            port: self.port.into(),
            target_port: Some(IntOrString::String(self.name.into())),
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        }
    }
}

/// Postfix's public ports: SMTP, submission with implicit TLS, submission with STARTTLS.
pub fn smtp_ports(p: &Ports) -> [NamedPort; 3] {
    [
        NamedPort {
            name: "smtp",
            port: p.smtp,
        },
        NamedPort {
            name: "submissions",
            port: p.submissions,
        },
        NamedPort {
            name: "submission",
            port: p.submission,
        },
    ]
}

/// Rspamd's controller: `/metrics` for Prometheus and `/ping` for the probes.
pub fn rspamd_metrics_port(p: &Ports) -> NamedPort {
    NamedPort {
        name: "rspamd-metrics",
        port: p.rspamd_controller,
    }
}

/// Port of the Postfix queue exporter sidecar (images/README.md).
pub const POSTFIX_EXPORTER_PORT: u16 = 9154;

/// The Postfix queue exporter's `/metrics`.
pub fn postfix_metrics_port() -> NamedPort {
    NamedPort {
        name: "postfix-metrics",
        port: POSTFIX_EXPORTER_PORT,
    }
}

/// The MTA pods' metrics ports. Their names are what the chart's PodMonitor scrapes.
pub fn mta_metrics_ports(spec: &crate::api::MailDomainSpec, p: &Ports) -> Vec<NamedPort> {
    let mut ports = vec![postfix_metrics_port(), rspamd_metrics_port(p)];
    if spec.continuity.is_some() {
        ports.push(continuity_metrics_port(p));
    }
    ports
}

/// The continuity agent's `/metrics` and `/status` (in the Postfix container).
pub fn continuity_metrics_port(p: &Ports) -> NamedPort {
    NamedPort {
        name: "cont-metrics",
        port: p.continuity_metrics,
    }
}

/// Dovecot's public ports: IMAP with STARTTLS and IMAPS.
pub fn imap_ports(p: &Ports) -> [NamedPort; 2] {
    [
        NamedPort {
            name: "imap",
            port: p.imap,
        },
        NamedPort {
            name: "imaps",
            port: p.imaps,
        },
    ]
}

/// Dovecot's internal ports: LMTP delivery (from Postfix), doveadm (replication between the
/// IMAP pods, backup jobs). Postfix's SASL goes to the MTA pod's own auth sidecar over
/// loopback, so no Service or NetworkPolicy carries an auth port.
pub fn imap_internal_ports(p: &Ports) -> [NamedPort; 2] {
    [
        NamedPort {
            name: "lmtp",
            port: p.lmtp,
        },
        NamedPort {
            name: "doveadm",
            port: p.doveadm,
        },
    ]
}

/// Dovecot's OpenMetrics exporter, and the replication agent's metrics when the domain has
/// replicas to replicate with.
pub fn imap_metrics_ports(layout: &Layout) -> Vec<NamedPort> {
    let p = &layout.ports;
    let mut ports = vec![NamedPort {
        name: "dovecot-metrics",
        port: p.dovecot_metrics,
    }];
    if crate::config::replication::enabled(layout) {
        ports.push(NamedPort {
            name: "repl-metrics",
            port: p.replication_metrics,
        });
    }
    ports
}

/// Service `<md>-mta`: SMTP 25, submissions 465, submission 587, exposed as `spec.mta.serviceType`.
pub fn build_mta(domain: &Domain) -> Service {
    let mta = &domain.spec.mta;
    public(
        domain,
        domain.names.mta(),
        Component::Mta,
        mta.service_type,
        mta.proxy_protocol,
        &mta.service_annotations,
        &smtp_ports(&domain.layout().ports),
    )
}

/// Service `<md>-imap`: IMAP 143 and IMAPS 993, exposed as `spec.imap.serviceType`.
pub fn build_imap(domain: &Domain) -> Service {
    let imap = &domain.spec.imap;
    public(
        domain,
        domain.names.imap(),
        Component::Imap,
        imap.service_type,
        imap.proxy_protocol,
        &imap.service_annotations,
        &imap_ports(&domain.layout().ports),
    )
}

/// Headless Service `<md>-mta-hl` governing the MTA StatefulSet (stable pod DNS names) and
/// carrying its metrics ports for scraping.
pub fn build_mta_headless(domain: &Domain) -> Service {
    let ports = domain.layout().ports;
    let mut named = vec![smtp_ports(&ports)[0]];
    named.extend(mta_metrics_ports(domain.spec, &ports));
    headless(
        domain,
        domain.names.mta_headless(),
        Component::Mta,
        false,
        &named,
    )
}

/// Headless Service `<md>-imap-hl`: LMTP, doveadm and metrics of every Dovecot pod.
/// Postfix delivers through it, and each pod finds its replication peer
/// by the pod's DNS name under it. Not-ready addresses are published so two replicas that
/// start together can reach each other to replicate before either is ready; Postfix retries
/// another address when one refuses.
pub fn build_imap_headless(domain: &Domain) -> Service {
    let layout = domain.layout();
    let mut named: Vec<NamedPort> = imap_internal_ports(&layout.ports).to_vec();
    named.extend(imap_metrics_ports(&layout));
    headless(
        domain,
        domain.names.imap_headless(),
        Component::Imap,
        true,
        &named,
    )
}

fn public(
    domain: &Domain,
    name: String,
    component: Component,
    service_type: ServiceType,
    proxy_protocol: bool,
    annotations: &std::collections::BTreeMap<String, String>,
    ports: &[NamedPort],
) -> Service {
    let mut metadata = domain.meta(name, component);
    if !annotations.is_empty() {
        metadata.annotations = Some(annotations.clone());
    }
    // Without the PROXY protocol the client address only survives a load balancer or node
    // port when traffic stays on the node that received it; Postfix needs that address for
    // postscreen, SPF and rate limits.
    let external_traffic_policy =
        (service_type != ServiceType::ClusterIP && !proxy_protocol).then(|| "Local".to_string());
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(service_type.as_str().into()),
            selector: Some(domain.selector(component)),
            ports: Some(ports.iter().map(|p| p.service_port()).collect()),
            external_traffic_policy,
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn headless(
    domain: &Domain,
    name: String,
    component: Component,
    publish_not_ready: bool,
    ports: &[NamedPort],
) -> Service {
    Service {
        metadata: domain.meta(name, component),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some("None".into()),
            selector: Some(domain.selector(component)),
            ports: Some(ports.iter().map(|p| p.service_port()).collect()),
            publish_not_ready_addresses: publish_not_ready.then_some(true),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing;

    fn port_numbers(s: &Service) -> Vec<i32> {
        s.spec
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.port)
            .collect()
    }

    #[test]
    fn public_services_expose_only_the_public_ports() {
        let md = testing::quickstart_domain();
        let domain = testing::domain(&md);
        assert_eq!(port_numbers(&build_mta(&domain)), [25, 465, 587]);
        assert_eq!(port_numbers(&build_imap(&domain)), [143, 993]);
        assert_eq!(
            port_numbers(&build_imap_headless(&domain)),
            [24, 12346, 9900, 9901]
        );
        // Kubernetes refuses port names longer than 15 characters (IANA service names).
        for sts in [
            build_imap_headless(&domain),
            build_mta(&domain),
            build_imap(&domain),
        ] {
            for p in sts.spec.unwrap().ports.unwrap() {
                let name = p.name.unwrap_or_default();
                assert!(name.len() <= 15, "port name {name} is too long");
            }
        }
    }

    #[test]
    fn service_type_annotations_and_client_address_policy_follow_the_spec() {
        let mut md = testing::quickstart_domain();
        md.spec.mta.service_annotations =
            [("lb.example/type".to_string(), "nlb".to_string())].into();
        md.spec.imap.service_type = ServiceType::ClusterIP;
        let domain = testing::domain(&md);
        let mta = build_mta(&domain);
        let spec = mta.spec.as_ref().unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert_eq!(
            mta.metadata.annotations.as_ref().unwrap()["lb.example/type"],
            "nlb"
        );
        let imap = build_imap(&domain);
        assert_eq!(
            imap.spec.as_ref().unwrap().type_.as_deref(),
            Some("ClusterIP")
        );
        assert_eq!(imap.spec.as_ref().unwrap().external_traffic_policy, None);
        assert_eq!(imap.metadata.annotations, None);

        md.spec.mta.proxy_protocol = true;
        let domain = testing::domain(&md);
        assert_eq!(
            build_mta(&domain).spec.unwrap().external_traffic_policy,
            None
        );
    }

    #[test]
    fn imap_headless_publishes_not_ready_pods_for_replication() {
        let md = testing::quickstart_domain();
        let domain = testing::domain(&md);
        let hl = build_imap_headless(&domain);
        let spec = hl.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(hl.metadata.name.as_deref(), Some("example-com-imap-hl"));
        let mta_hl = build_mta_headless(&domain);
        assert_eq!(mta_hl.spec.unwrap().publish_not_ready_addresses, None);
    }
}
