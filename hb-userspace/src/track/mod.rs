//! Host state from last-seen times: the tracker's transitions, the sweep
//! that drives it, the event lines it reports and the silent-host pages.
//! Pure logic over a `Table`, whichever path fills it.

pub mod adaptive;
pub mod events;
pub mod flap;
pub mod fleet;
pub mod recent;
pub mod silent;
mod spare;
pub mod sweeper;
pub mod table;
pub mod tracker;
