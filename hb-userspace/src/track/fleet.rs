//! The operator's fleet: which hosts are expected (the inventory), their
//! names and labels, and per-group timeouts. What the config file's
//! `[inventory]` and `[groups.NAME]` tables and the matching options say,
//! handed to the sweeper as one value so that a reload swaps it whole.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

/// Hosts the inventory does not list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownHosts {
    /// Reported `new` and tracked, as without an inventory.
    #[default]
    Track,
    /// Counted, not tracked.
    Ignore,
}

/// Per-group settings (`[groups.NAME]`): hosts whose `group` label is NAME.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupPolicy {
    pub timeout: Option<Duration>,
    pub grace: Option<Duration>,
}

/// What the configuration says about the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// The inventory CSV; `None`: no inventory, every host is `new` when first heard.
    pub inventory: Option<PathBuf>,
    /// An inventoried host not heard within this after start (or after it was added) is `missing`.
    pub grace: Duration,
    pub unknown_hosts: UnknownHosts,
    /// Hosts outside the inventory are forgotten after this much silence.
    pub forget_after: Duration,
    pub groups: BTreeMap<String, GroupPolicy>,
}

pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
pub const DEFAULT_FORGET_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            inventory: None,
            grace: DEFAULT_GRACE,
            unknown_hosts: UnknownHosts::Track,
            forget_after: DEFAULT_FORGET_AFTER,
            groups: BTreeMap::new(),
        }
    }
}

/// A bad inventory or group setting, said so that the operator can fix it.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `line` is 1-based, counting the header.
    #[error("{path}:{line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// The loaded fleet: the inventory's hosts with their names and labels, and
/// the policies. `Send`, so a reload can load it off the event loop.
#[derive(Debug, Default)]
pub struct Fleet {
    pub config: FleetConfig,
}

impl Fleet {
    /// Reads the inventory the config names and checks the groups.
    // SKELETON: the inventory work replaces this body.
    pub fn load(config: &FleetConfig) -> Result<Fleet, FleetError> {
        if config.inventory.is_some() {
            return Err(FleetError::Invalid("inventory: not implemented yet".into()));
        }
        Ok(Fleet {
            config: config.clone(),
        })
    }
}
