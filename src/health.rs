//! Health: is each region's registry replica answering?
//!
//! Three parts, in the order data flows through them:
//! - [`mod@probe`]: one probe of one region (HTTP `GET` of the upstream's `/v2/`, or a TCP
//!   connect), the only IO here; every failure becomes an outcome with a readable error.
//! - [`state`]: the pure `fall`/`rise` state machine that turns outcomes into [`Health`], plus
//!   the last error and a smoothed latency. No IO, no clock.
//! - [`monitor`]: the loop, one task per region, that probes on the interval, keeps a table
//!   the admin API reads, and hands a [`HealthReport`] to a callback on every change.
//!
//! Not here: what health does to answers. The app turns a report into region states of a new
//! snapshot ([`crate::routing::RegionState::healthy`]); routing decides.

pub mod monitor;
pub mod probe;
pub mod state;

pub use monitor::{HealthReport, Monitor, MonitorHandle, RegionHealth};
pub use probe::{probe, NetworkProber, ProbeError, Prober};
pub use state::{Health, HealthState, ProbeOutcome, Transition};
