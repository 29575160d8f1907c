//! Counters, shown as JSON (`/api/v1/bridge/metrics`) and in Prometheus text (`/metrics`).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::overlay::OverlayStats;
use crate::relay::Stats as RelayStats;

/// The edge's own counters (the relay's and the router connection's are added when shown).
#[derive(Debug, Default)]
pub struct Metrics {
    /// CONNECTs relayed over the overlay.
    pub connects_relayed: AtomicU64,
    /// CONNECTs tunnelled directly (no route, or the route is down with fallback).
    pub connects_tunnelled: AtomicU64,
    /// CONNECTs answered with our well-known.
    pub connects_well_known: AtomicU64,
    /// Tunnels refused: the target address is not public and not allowed.
    pub tunnels_refused: AtomicU64,
    /// Tunnels whose target could not be reached.
    pub tunnels_failed: AtomicU64,
    /// CONNECTs refused for missing or wrong proxy credentials.
    pub proxy_auth_failed: AtomicU64,
    /// Bad CONNECTs or non-CONNECT requests to the proxy.
    pub proxy_bad_requests: AtomicU64,
    /// Homeserver requests relayed over the overlay.
    pub requests_relayed: AtomicU64,
    /// ... answered with the destination's real response.
    pub responses_relayed: AtomicU64,
    /// ... failed with 502 (the overlay refused).
    pub failed_502: AtomicU64,
    /// ... failed with 504 (the destination edge did not answer).
    pub failed_504: AtomicU64,
    /// ... failed otherwise (refused by the destination edge, busy).
    pub failed_other: AtomicU64,
    /// Homeserver connections closed so its retry goes direct (fallback).
    pub fallback_closes: AtomicU64,
    /// Peers' requests delivered to our homeserver.
    pub delivered: AtomicU64,
    /// Peers' requests refused (421 or bad).
    pub delivery_refused: AtomicU64,
    /// Peers' requests our homeserver did not answer.
    pub delivery_failed: AtomicU64,
    /// Peers' requests abandoned by their sender.
    pub delivery_abandoned: AtomicU64,
    /// Time from a relayed request's start to its response head, microseconds in all.
    pub relay_micros: AtomicU64,
    /// Time our homeserver took, microseconds in all.
    pub delivery_micros: AtomicU64,
    /// Route changes through the API.
    pub route_changes: AtomicU64,
}

impl Metrics {
    /// Adds one.
    pub fn inc(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a relayed request's time to its response head.
    pub fn observe_relay(&self, d: Duration) {
        self.relay_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Records our homeserver's time for a delivered request.
    pub fn observe_delivery(&self, d: Duration) {
        self.delivery_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Every counter, named, in a stable order (edge, relay, router connection).
    pub fn all(
        &self,
        relay: &RelayStats,
        overlay: &OverlayStats,
    ) -> Vec<(&'static str, &'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            (
                "connects_relayed_total",
                "CONNECTs relayed over the overlay",
                g(&self.connects_relayed),
            ),
            (
                "connects_tunnelled_total",
                "CONNECTs tunnelled directly",
                g(&self.connects_tunnelled),
            ),
            (
                "connects_well_known_total",
                "CONNECTs answered with our well-known",
                g(&self.connects_well_known),
            ),
            (
                "tunnels_refused_total",
                "tunnels refused: target not public and not allowed",
                g(&self.tunnels_refused),
            ),
            (
                "tunnels_failed_total",
                "tunnels whose target could not be reached",
                g(&self.tunnels_failed),
            ),
            (
                "proxy_auth_failed_total",
                "CONNECTs refused for proxy credentials",
                g(&self.proxy_auth_failed),
            ),
            (
                "proxy_bad_requests_total",
                "malformed or non-CONNECT proxy requests",
                g(&self.proxy_bad_requests),
            ),
            (
                "requests_relayed_total",
                "homeserver requests relayed",
                g(&self.requests_relayed),
            ),
            (
                "responses_relayed_total",
                "real responses relayed back",
                g(&self.responses_relayed),
            ),
            (
                "requests_failed_502_total",
                "relayed requests failed with 502",
                g(&self.failed_502),
            ),
            (
                "requests_failed_504_total",
                "relayed requests failed with 504",
                g(&self.failed_504),
            ),
            (
                "requests_failed_other_total",
                "relayed requests failed otherwise",
                g(&self.failed_other),
            ),
            (
                "fallback_closes_total",
                "connections closed so the retry goes direct",
                g(&self.fallback_closes),
            ),
            (
                "delivered_total",
                "peer requests delivered to our homeserver",
                g(&self.delivered),
            ),
            (
                "delivery_refused_total",
                "peer requests refused (421)",
                g(&self.delivery_refused),
            ),
            (
                "delivery_failed_total",
                "peer requests our homeserver did not answer",
                g(&self.delivery_failed),
            ),
            (
                "delivery_abandoned_total",
                "peer requests abandoned by their sender",
                g(&self.delivery_abandoned),
            ),
            (
                "relay_micros_total",
                "microseconds from relayed request to response head",
                g(&self.relay_micros),
            ),
            (
                "delivery_micros_total",
                "microseconds our homeserver took",
                g(&self.delivery_micros),
            ),
            (
                "route_changes_total",
                "route changes through the API",
                g(&self.route_changes),
            ),
            (
                "relay_envelopes_sent_total",
                "envelopes sent",
                relay.envelopes_sent,
            ),
            (
                "relay_items_sent_total",
                "items sent in envelopes",
                relay.items_sent,
            ),
            (
                "relay_envelopes_received_total",
                "envelopes received",
                relay.envelopes_received,
            ),
            (
                "relay_dropped_total",
                "envelopes or items dropped as invalid, stray or over a bound",
                relay.dropped,
            ),
            (
                "relay_incoming_expired_total",
                "peer requests abandoned after nothing moved on them for the request timeout",
                relay.incoming_expired,
            ),
            (
                "relay_requests_refused_total",
                "peer requests refused over a limit",
                relay.requests_refused,
            ),
            (
                "relay_body_bytes_sent_total",
                "body bytes sent",
                relay.body_bytes_sent,
            ),
            (
                "relay_body_bytes_received_total",
                "body bytes received",
                relay.body_bytes_received,
            ),
            (
                "router_pushed_total",
                "messages the router accepted",
                overlay.pushed,
            ),
            (
                "router_push_failed_total",
                "pushes the router refused or missed",
                overlay.push_failed,
            ),
            (
                "router_received_total",
                "messages received from the router",
                overlay.received,
            ),
            (
                "router_reconnects_total",
                "reconnections to the router",
                overlay.reconnects,
            ),
        ]
    }
}

/// The counters as a JSON object.
pub fn json(all: &[(&'static str, &'static str, u64)], gauges: &[(&'static str, u64)]) -> Value {
    let mut m = serde_json::Map::new();
    for (name, _, v) in all {
        m.insert((*name).to_owned(), json!(v));
    }
    for (name, v) in gauges {
        m.insert((*name).to_owned(), json!(v));
    }
    Value::Object(m)
}

/// The counters in Prometheus text format, prefixed `hyphae_edge_`.
pub fn prometheus(
    all: &[(&'static str, &'static str, u64)],
    gauges: &[(&'static str, u64)],
) -> String {
    let mut s = String::new();
    for (name, help, v) in all {
        let _ = writeln!(s, "# HELP hyphae_edge_{name} {help}");
        let _ = writeln!(s, "# TYPE hyphae_edge_{name} counter");
        let _ = writeln!(s, "hyphae_edge_{name} {v}");
    }
    for (name, v) in gauges {
        let _ = writeln!(s, "# TYPE hyphae_edge_{name} gauge");
        let _ = writeln!(s, "hyphae_edge_{name} {v}");
    }
    s
}
