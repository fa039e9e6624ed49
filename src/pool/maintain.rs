//! The pool's background upkeep: idle timeout, lifetime, broken idle
//! connections, `min_pool_size`, and host names resolved again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::{Pool, Shared};
use crate::config::HostPort;

/// Closes idle servers past their idle timeout or lifetime and keeps
/// `min_size` open (not while opening fails: the backoff decides).
/// Resolves host names every `dns_ttl`. Ends when the pool is dropped.
pub(super) async fn maintain(pool: Weak<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dns = Dns::default();
    loop {
        tick.tick().await;
        let Some(shared) = pool.upgrade() else { return };
        let st = shared.settings.read().clone();
        let retired =
            shared.retired.load(Ordering::Relaxed) && shared.clients.load(Ordering::Relaxed) == 0;
        let now = Instant::now();
        if dns.due(now, st.dns_ttl) && shared.inner.lock().total > 0 {
            let target = shared.route.read().target.clone();
            let handle = Pool { shared };
            dns.refresh(&handle, &target.hosts).await;
            continue;
        }
        let (expired, open) = {
            let mut inner = shared.inner.lock();
            // Every connection opened before these marks is past its lifetime.
            inner
                .stale_addrs
                .retain(|(_, since)| now.saturating_duration_since(*since) < st.lifetime);
            let expired = inner.remove_idle(|c, total| {
                let too_old = c.age(now) >= st.lifetime;
                let too_idle = now.saturating_duration_since(c.last_used) >= st.idle_timeout
                    && total > st.min_size;
                too_old || too_idle || retired || !c.is_clean_idle(now)
            });
            let mut open = 0;
            while !retired
                && inner.failures == 0
                && inner.total < st.min_size.min(st.size)
                && inner.count_open()
            {
                open += 1;
            }
            // The reserve opens once a client has waited long enough.
            while !retired && inner.reserve_open(st.size) {
                open += 1;
            }
            (expired, open)
        };
        drop(expired);
        let handle = Pool { shared };
        for _ in 0..open {
            handle.spawn_open();
        }
    }
}

/// The addresses each host name resolved to last time.
#[derive(Default)]
struct Dns {
    last: Option<Instant>,
    answers: HashMap<HostPort, Vec<SocketAddr>>,
}

impl Dns {
    fn due(&self, now: Instant, ttl: Duration) -> bool {
        !ttl.is_zero()
            && self
                .last
                .is_none_or(|t| now.saturating_duration_since(t) >= ttl)
    }

    /// Resolves every host name again; an address that left a name's
    /// answer is marked stale in the pool (its connections close when next
    /// seen). Literal addresses and failed lookups change nothing.
    async fn refresh(&mut self, pool: &Pool, hosts: &[HostPort]) {
        self.last = Some(Instant::now());
        self.answers.retain(|h, _| hosts.contains(h));
        for host in hosts {
            if host.host.parse::<std::net::IpAddr>().is_ok() {
                continue;
            }
            let Ok(now) = crate::server::resolve(host).await else {
                continue;
            };
            if let Some(before) = self.answers.insert(host.clone(), now.clone()) {
                for gone in before.iter().filter(|a| !now.contains(a)) {
                    tracing::info!(pool = %pool.name(), host = %host, address = %gone, "host name no longer resolves to this address; its connections close");
                    pool.retire_address(*gone);
                }
            }
        }
    }
}
