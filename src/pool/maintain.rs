//! The pool's background upkeep: idle timeout, lifetime, broken idle
//! connections, and `min_pool_size`.

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};

use super::{Pool, Shared};

/// Closes idle servers past their idle timeout or lifetime and keeps
/// `min_size` open. Ends when the pool is dropped.
pub(super) async fn maintain(pool: Weak<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = pool.upgrade() else { return };
        let st = shared.settings.read().clone();
        let retired = shared.retired.load(Ordering::Relaxed);
        let now = Instant::now();
        let (expired, open) = {
            let mut inner = shared.inner.lock();
            let mut expired = Vec::new();
            let mut i = 0;
            while i < inner.idle.len() {
                let c = &inner.idle[i];
                let too_old = c.age(now) >= st.lifetime;
                let too_idle = now.saturating_duration_since(c.last_used) >= st.idle_timeout
                    && inner.total > st.min_size;
                if too_old || too_idle || retired || !c.is_clean_idle(now) {
                    if let Some(c) = inner.idle.remove(i) {
                        inner.forget(c.id);
                        expired.push(c);
                    }
                } else {
                    i += 1;
                }
            }
            let mut open = 0;
            while !retired && inner.total < st.min_size.min(st.size) {
                inner.total += 1;
                inner.opening += 1;
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
