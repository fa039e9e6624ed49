//! Command-line interface: subcommands and their options, no logic.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// pgmux: a PostgreSQL connection pooler.
#[derive(Debug, Parser)]
#[command(name = "pgmux", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve clients.
    Run {
        /// Config file.
        #[arg(long, short, default_value = "config/pgmux.toml", env = "PGMUX_CONFIG")]
        config: PathBuf,
        /// Take the listening sockets of the pgmux already running (at the
        /// config's `takeover_socket`), which then drains: an upgrade or
        /// restart that never refuses a connection.
        #[arg(long)]
        takeover: bool,
    },
    /// Validate a config file and print the effective configuration.
    Check {
        /// Config file.
        #[arg(long, short, default_value = "config/pgmux.toml", env = "PGMUX_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file, then have the running instance reload it.
    ///
    /// The instance is found at the file's `listen` address and reached
    /// through the admin console as the first `[admin] users` entry (or
    /// `--user`), with that user's password from the file or from
    /// `PGMUX_ADMIN_PASSWORD`. The instance re-reads the file it was started
    /// with, so pass the same path.
    Reload {
        /// Config file.
        #[arg(long, short, default_value = "config/pgmux.toml", env = "PGMUX_CONFIG")]
        config: PathBuf,
        /// Admin user to connect as.
        #[arg(long)]
        user: Option<String>,
    },
    /// Start a throwaway PostgreSQL, put pgmux in front, and compare a burst
    /// of short-lived clients against both.
    Demo {
        /// Concurrent clients in the burst.
        #[arg(long, default_value_t = 500)]
        clients: usize,
        /// Seconds each burst runs.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Print a SCRAM-SHA-256 verifier and an md5 hash for a user's password
    /// (the password is read from standard input).
    HashPassword {
        /// The user name (md5 hashes include it).
        user: String,
    },
}
