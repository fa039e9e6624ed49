//! What every session needs from the process: the configuration, the users'
//! secrets, the pools, the cancel registry and the shutdown state. The app
//! builds one and hands an `Arc` of it to each session.

use std::collections::HashMap;
use std::sync::Arc;

use crate::auth::{ScramVerifier, Secret};
use crate::config::Config;
use crate::pool::PoolSet;
use crate::prepared::Registry;
use crate::session::cancel::CancelRegistry;
use crate::shutdown::Shutdown;

/// How one configured user is authenticated.
#[derive(Debug)]
pub struct UserAuth {
    /// The secret as configured.
    pub secret: Secret,
    /// Verifier used for SCRAM logins (derived once for plaintext passwords).
    pub scram: Option<ScramVerifier>,
}

/// Process-wide state shared by sessions.
pub struct Context {
    /// The configuration in force.
    pub config: Config,
    /// Users by name.
    pub users: HashMap<String, UserAuth>,
    /// Server pools.
    pub pools: PoolSet,
    /// Client cancel keys.
    pub cancels: CancelRegistry,
    /// Shutdown phase and live-session count.
    pub shutdown: Arc<Shutdown>,
    /// Distinct prepared statements of all clients.
    pub statements: Registry,
}

impl Context {
    /// Builds the context for a validated configuration.
    pub fn new(config: Config) -> Self {
        let users = config
            .users
            .iter()
            .map(|(name, u)| {
                let secret = Secret::parse(&u.password);
                let scram = secret.scram_verifier();
                (name.clone(), UserAuth { secret, scram })
            })
            .collect();
        Self {
            config,
            users,
            pools: PoolSet::default(),
            cancels: CancelRegistry::default(),
            shutdown: Arc::new(Shutdown::default()),
            statements: Registry::default(),
        }
    }
}
