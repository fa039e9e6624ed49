//! pgmux: a PostgreSQL connection-pooling proxy.
//!
//! # Layout, along the data path
//! - [`listener`] accepts clients and spawns a session per connection.
//! - [`session`] runs one client: [`session::startup`] logs it in (with
//!   [`auth`]), then the session loop forwards frames between the client and
//!   a server taken from its [`pool`], keeping reply order with
//!   [`session::expect`] and parameters with [`session::params`].
//! - [`prepared`] makes named statements follow clients across servers.
//! - [`pool`] keeps the [`server`] connections of one (database, user).
//! - [`protocol`] frames and encodes messages; it does no I/O. [`sql`]
//!   reads just enough SQL to see which statements change session state.
//! - [`admin`] is the `pgmux` admin database, [`stats`] the counters and
//!   Prometheus endpoint, [`reload`] the live configuration change.
//! - [`config`], [`context`], [`shutdown`] and [`app`] wire it together;
//!   [`cluster`] and [`demo`] run a throwaway PostgreSQL for the demo and tests.

// Unsafe code is denied everywhere but in `takeover`, whose SCM_RIGHTS
// descriptor passing and SO_PEERCRED check have no safe interface.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod cancel;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod context;
pub mod demo;
pub mod listener;
pub mod pool;
pub mod prepared;
pub mod protocol;
pub mod reload;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod sql;
pub mod stats;
#[allow(unsafe_code)]
pub mod takeover;
pub mod tls;
