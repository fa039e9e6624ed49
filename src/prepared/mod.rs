//! Named prepared statements in transaction mode.
//!
//! Clients name statements as they like (`sqlx_s_1`, `S_1`, `P_0`, ...), and
//! in transaction mode each of their transactions may run on a different
//! server. pgmux therefore maps every client's names to shared registry
//! entries keyed by the full statement (query text + parameter types), gives
//! each entry a server-side name `pgmux_<n>` that is never reused, and keeps
//! for every server connection the set of entries it has prepared. The
//! session rewrites names and injects a Parse wherever a server lacks a
//! statement; see `docs/architecture.md` for the whole algorithm.

pub mod client;
mod hook;
pub mod messages;
mod outbox;
pub mod registry;
pub mod server;
pub mod tracker;

#[cfg(test)]
mod tests;

pub use client::ClientStatements;
pub use hook::{Hook, Undo};
pub use outbox::{Flags, Limits, Malformed, Outbox, RouteError, Routed};
pub use registry::{Counters, Registry, Statement, SQL_PREPARE};
pub use server::ServerStatements;
pub use tracker::Tracker;
