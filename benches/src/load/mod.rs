//! The end-to-end load test: a generator in one network namespace simulates
//! a fleet of hosts and sends their heartbeats through a veth pair to a real
//! `hb run` in another, then compares what was sent with what the collector
//! accounted and reported.

pub mod collector;
pub mod cpu;
pub mod fleet;
pub mod generator;
pub mod inventory;
pub mod memory;
pub mod quality;
pub mod reference;
pub mod report;
pub mod scenarios;
pub mod signals;
pub mod topology;

use anyhow::Result;

use collector::Ingest;
use scenarios::{Config, Row, Scenario};

/// Runs every scenario with every ingest mode, in that order. Ingest modes
/// other than XDP need `hb run --ingest`; without it only XDP runs (the
/// returned notes say so).
pub fn run_all(
    cfg: &Config,
    scenarios: &[Scenario],
    ingest: &[Ingest],
) -> Result<(Vec<Row>, Vec<String>)> {
    cfg.validate()?;
    let has_ingest = collector::supports_ingest(&cfg.hb)?;
    let mut notes = Vec::new();
    let mut modes: Vec<Ingest> = Vec::new();
    for &mode in ingest {
        if mode == Ingest::Socket && !has_ingest {
            notes.push(format!(
                "hb's socket mode not measured: {} has no `hb run --ingest`. In its place, \
                 `ref-socket` is a bare reference reader (recvmmsg on a UDP socket in the \
                 collector namespace, no host table, no events): a lower bound of what any \
                 socket-mode collector costs",
                cfg.hb.display()
            ));
            if !ingest.contains(&Ingest::RefSocket) {
                modes.push(Ingest::RefSocket);
            }
        } else {
            modes.push(mode);
        }
    }
    let mut rows = Vec::new();
    for &sc in scenarios {
        for &mode in &modes {
            if mode == Ingest::RefSocket && !scenarios::reference_runs(sc) {
                continue;
            }
            log::info!("scenario {} with {} ingest", sc.name(), mode.name());
            let row = scenarios::run(cfg, sc, mode, has_ingest)?;
            log::info!(
                "{} / {}: sent {}, accounted {}, {}",
                sc.name(),
                mode.name(),
                row.sent.heartbeats,
                row.accounted(),
                if row.problems.is_empty() {
                    "as expected".to_string()
                } else {
                    row.problems.join("; ")
                }
            );
            rows.push(row);
        }
    }
    Ok((rows, notes))
}
