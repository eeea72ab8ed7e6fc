//! Follows the interface the program is attached to: when it disappears
//! (driver reload, veth deleted) the program's link dies with it; hb keeps
//! sweeping (its hosts go silent, which is the truth), and attaches again
//! when an interface of that name is back.

use std::path::PathBuf;

use log::{info, warn};

use super::{
    link::if_index,
    program::{self, AttachMode, Loaded},
};

pub struct IfaceWatch {
    name: String,
    mode: AttachMode,
    /// Where the collector's link is pinned.
    link: PathBuf,
    /// The index attached to, or None while the interface is gone.
    index: Option<u32>,
}

impl IfaceWatch {
    /// Watches `name`, to which the program was just attached in `mode`
    /// through the link pinned at `link`.
    pub fn new(name: &str, mode: AttachMode, link: PathBuf) -> Self {
        Self {
            name: name.to_owned(),
            mode,
            link,
            index: if_index(name),
        }
    }

    /// Attaches again if the interface came back since the last check.
    pub fn check(&mut self, loaded: &mut Loaded) {
        let iface = &self.name;
        let now = if_index(iface);
        if now == self.index {
            return;
        }
        if now.is_none() {
            warn!(
                "{iface} is gone: no heartbeats can arrive, its hosts will be reported silent; hb attaches again when {iface} is back"
            );
            self.index = None;
            return;
        }
        // Back (or replaced by a new interface of that name).
        match program::attach(loaded, iface, self.mode, Some(&self.link)) {
            Ok(_) => {
                info!("{iface} is back: attached again");
                self.index = now;
            }
            // Tried again on the next sweep.
            Err(e) => warn!("attaching to {iface} again: {e:#}"),
        }
    }
}
