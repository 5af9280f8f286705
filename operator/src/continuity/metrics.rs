//! The continuity agent's metrics, served as OpenMetrics on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::Status;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    pub result: String,
}

pub struct Metrics {
    registry: Registry,
    pub upstream_available: Gauge,
    pub local_delivery: Gauge,
    pub spooled_messages: Gauge,
    pub oldest_spooled_seconds: Gauge,
    pub held_copies: Gauge,
    pub probes: Family<ProbeLabels, Counter>,
    pub switches: Counter,
    pub released: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("postwarden_continuity");
        let m = Self {
            registry: Registry::default(),
            upstream_available: Gauge::default(),
            local_delivery: Gauge::default(),
            spooled_messages: Gauge::default(),
            oldest_spooled_seconds: Gauge::default(),
            held_copies: Gauge::default(),
            probes: Family::default(),
            switches: Counter::default(),
            released: Counter::default(),
        };
        registry.register(
            "upstream_available",
            "1 while the upstream takes mail, 0 during an outage",
            m.upstream_available.clone(),
        );
        registry.register(
            "local_delivery",
            "1 while accepted mail is also delivered to the emergency inboxes",
            m.local_delivery.clone(),
        );
        registry.register(
            "spooled_messages",
            "Messages waiting to be relayed to the upstream",
            m.spooled_messages.clone(),
        );
        registry.register(
            "oldest_spooled_seconds",
            "Age of the oldest message waiting for the upstream",
            m.oldest_spooled_seconds.clone(),
        );
        registry.register(
            "held_copies",
            "Emergency-inbox copies held in the queue while local delivery is off",
            m.held_copies.clone(),
        );
        registry.register("probes", "Upstream probes by result", m.probes.clone());
        registry.register(
            "switches",
            "Times local delivery was switched on or off",
            m.switches.clone(),
        );
        registry.register(
            "released_copies",
            "Held copies deleted because their message reached the upstream",
            m.released.clone(),
        );
        Self { registry, ..m }
    }

    pub fn probe(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.probes
            .get_or_create(&ProbeLabels {
                result: result.into(),
            })
            .inc();
    }

    pub fn set(&self, s: &Status) {
        self.upstream_available.set(i64::from(s.upstream_available));
        self.local_delivery.set(i64::from(s.local_delivery));
        self.spooled_messages.set(s.spooled_messages as i64);
        self.oldest_spooled_seconds.set(s.oldest_spooled_seconds);
        self.held_copies.set(s.held_copies as i64);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encodable");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_names_are_the_ones_the_chart_may_query() {
        let m = Metrics::new();
        m.probe(true);
        m.probe(false);
        m.switches.inc();
        m.released.inc_by(3);
        m.set(&Status {
            upstream_available: false,
            local_delivery: true,
            spooled_messages: 7,
            oldest_spooled_seconds: 42,
            ..Status::default()
        });
        let text = m.encode();
        crate::test_support::assert_exports_exactly(
            &text,
            include_str!("../../../charts/postwarden/metrics-continuity.txt"),
            "metrics-continuity.txt",
        );
        assert!(
            text.contains("postwarden_continuity_upstream_available 0"),
            "{text}"
        );
        assert!(
            text.contains("postwarden_continuity_spooled_messages 7"),
            "{text}"
        );
        assert!(
            text.contains("postwarden_continuity_probes_total{result=\"failed\"} 1"),
            "{text}"
        );
    }
}
