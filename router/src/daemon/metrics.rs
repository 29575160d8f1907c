//! Prometheus metrics on `--metrics-api-address`: the control thread's route and TLV counts,
//! every link's counters and every worker's forwarding and drop counters.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::inbox::Admin;
use super::peers::PeerHandle;
use super::shared::{Shared, WorkerCounters};

/// Reads one figure of a `T`.
type Read<T> = fn(&T) -> u64;

/// The metrics page.
pub(crate) async fn prometheus(State(s): State<Arc<Shared>>) -> Response {
    let mut out = String::new();
    let c = s.inbox.ask_control(Admin::Stats).await.unwrap_or_default();
    let _ = writeln!(
        out,
        "# TYPE hyphae_routes_selected gauge\nhyphae_routes_selected {}",
        c.selected_routes
    );
    let _ = writeln!(
        out,
        "# TYPE hyphae_routes gauge\nhyphae_routes {}",
        c.routes
    );
    let _ = writeln!(out, "# TYPE hyphae_peers gauge\nhyphae_peers {}", c.peers);
    let _ = writeln!(
        out,
        "# TYPE hyphae_control_tlvs_total counter\nhyphae_control_tlvs_total {}",
        c.tlvs
    );
    let _ = writeln!(
        out,
        "# TYPE hyphae_updates_filtered_total counter\nhyphae_updates_filtered_total {}",
        c.updates_filtered
    );
    let _ = writeln!(
        out,
        "# TYPE hyphae_answers_rate_limited_total counter\nhyphae_answers_rate_limited_total {}",
        c.answers_rate_limited
    );
    let _ = writeln!(
        out,
        "# TYPE hyphae_forwards_rate_limited_total counter\nhyphae_forwards_rate_limited_total {}",
        c.forwards_rate_limited
    );
    let _ = writeln!(
        out,
        "# TYPE hyphae_updates_capped_total counter\nhyphae_updates_capped_total {}",
        c.updates_capped
    );
    let _ = writeln!(
        out,
        "# TYPE hyphae_discovered_refused_total counter\nhyphae_discovered_refused_total {}",
        c.discovered_refused
    );
    let _ = writeln!(out, "# TYPE hyphae_table_full_copies_total counter");
    for (table, n) in [
        ("fib", c.fib_full_copies),
        ("route_keys", c.route_keys_full_copies),
    ] {
        let _ = writeln!(
            out,
            "hyphae_table_full_copies_total{{table=\"{table}\"}} {n}"
        );
    }
    let a = &s.admission;
    let _ = writeln!(
        out,
        "# TYPE hyphae_inbound_links gauge\nhyphae_inbound_links {}",
        a.held()
    );
    let _ = writeln!(out, "# TYPE hyphae_inbound_refused_total counter");
    for (reason, n) in [
        ("total", &a.refused_total),
        ("per_address", &a.refused_per_address),
    ] {
        let _ = writeln!(
            out,
            "hyphae_inbound_refused_total{{reason=\"{reason}\"}} {}",
            n.load(Relaxed)
        );
    }
    let peers = s.peers.load();
    let per_peer: [(&str, Read<PeerHandle>); 8] = [
        ("rx_bytes", |h| h.counters.rx_bytes.load(Relaxed)),
        ("rx_frames", |h| h.counters.rx_frames.load(Relaxed)),
        ("tx_bytes", |h| h.counters.tx_bytes.load(Relaxed)),
        ("tx_frames", |h| h.counters.tx_frames.load(Relaxed)),
        ("queue_full_drops", |h| {
            h.counters.dropped_queue_full.load(Relaxed)
        }),
        ("queued_bytes", |h| h.queued.load(Relaxed) as u64),
        ("control_drops", |h| {
            h.counters.dropped_control.load(Relaxed)
        }),
        ("control_queued_bytes", |h| {
            h.ctl_queued.load(Relaxed) as u64
        }),
    ];
    for (name, f) in per_peer {
        let _ = writeln!(out, "# TYPE hyphae_peer_{name} gauge");
        for h in peers.values() {
            let _ = writeln!(
                out,
                "hyphae_peer_{name}{{peer=\"{}\",endpoint=\"{}\",worker=\"{}\"}} {}",
                h.id.0,
                h.endpoint,
                h.worker,
                f(h)
            );
        }
    }
    let reasons: [(&str, Read<WorkerCounters>); 20] = [
        ("forwarded", |c| c.forwarded.load(Relaxed)),
        ("local", |c| c.local.load(Relaxed)),
        ("local_opened", |c| c.local_opened.load(Relaxed)),
        ("local_unopened", |c| c.local_unopened.load(Relaxed)),
        ("drop_hop_limit", |c| c.drop_hop_limit.load(Relaxed)),
        ("drop_no_route", |c| c.drop_no_route.load(Relaxed)),
        ("drop_queue_full", |c| c.drop_queue_full.load(Relaxed)),
        ("drop_loop", |c| c.drop_loop.load(Relaxed)),
        ("skipped_control", |c| c.skipped_control.load(Relaxed)),
        ("framing_errors", |c| c.framing_errors.load(Relaxed)),
        ("control_queue_waits", |c| {
            c.control_queue_waits.load(Relaxed)
        }),
        ("drop_message_queue", |c| c.drop_message_queue.load(Relaxed)),
        ("quic_oversize_on_stream", |c| {
            c.quic_oversize_on_stream.load(Relaxed)
        }),
        ("icmp_sent", |c| c.icmp_sent.load(Relaxed)),
        ("tun_read", |c| c.tun_read.load(Relaxed)),
        ("tun_written", |c| c.tun_written.load(Relaxed)),
        ("tun_icmp", |c| c.tun_icmp.load(Relaxed)),
        ("drop_tun_foreign_source", |c| {
            c.drop_tun_foreign_source.load(Relaxed)
        }),
        ("drop_tun_invalid", |c| c.drop_tun_invalid.load(Relaxed)),
        ("drop_tun_write", |c| c.drop_tun_write.load(Relaxed)),
    ];
    for (name, f) in reasons {
        let _ = writeln!(out, "# TYPE hyphae_{name}_total counter");
        for (i, c) in s.counters.iter().enumerate() {
            let _ = writeln!(out, "hyphae_{name}_total{{worker=\"{i}\"}} {}", f(c));
        }
    }
    let _ = writeln!(
        out,
        "# TYPE hyphae_key_cache_evictions_total counter\nhyphae_key_cache_evictions_total {}",
        s.key_cache_evictions.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# TYPE hyphae_local_socket_unread_closes_total counter\nhyphae_local_socket_unread_closes_total {}",
        s.local_socket_unread_closes.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# TYPE hyphae_message_waits_refused_total counter\nhyphae_message_waits_refused_total {}",
        s.message_waits_refused.load(Relaxed)
    );
    ([("content-type", "text/plain; version=0.0.4")], out).into_response()
}
