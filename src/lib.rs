//! Berth: geo-aware authoritative DNS and traffic routing for replicated container registries.
//!
//! Modules, in reading order:
//! - [`config`]: the TOML config, parsed into serde `Raw*` types and validated into [`config::Config`].
//! - [`geo`]: MaxMind DB lookups (client address -> location) and the pure distance model;
//!   also the offline mmdb builder behind `berth geoip build`.
//! - [`routing`]: THE core. `decide` picks a region for a client key; pure, deterministic.
//! - [`zone`]: static zone data from RFC 1035 master files and the authoritative lookup.
//! - [`snapshot`]: everything a query needs, built off the hot path and swapped in whole.
//! - [`dns`]: the DNS front end (UDP fast path, hickory-server for TCP).
//! - [`app`]: wiring: loads config, builds the snapshot, starts the front ends.

pub mod app;
pub mod config;
pub mod dns;
pub mod geo;
pub mod health;
pub mod routing;
pub mod snapshot;
pub mod zone;
