//! The live tail of decision records (`GET /admin/decisions/stream`): every record this
//! instance makes, as it is made, to whoever is watching.
//!
//! With no one watching, publishing is one relaxed atomic load: the request path pays nothing
//! for a feature that is off. A watcher that falls more than [`CAPACITY`] records behind loses
//! the oldest ones and is told how many (`Lagged`), rather than holding the gateway back.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast;

use super::store::DecisionRecord;

/// Records a slow watcher may fall behind before it starts losing the oldest.
pub const CAPACITY: usize = 1024;

pub struct Tail {
    watchers: Arc<AtomicUsize>,
    tx: broadcast::Sender<Arc<DecisionRecord>>,
}

impl Default for Tail {
    fn default() -> Tail {
        Tail {
            watchers: Arc::new(AtomicUsize::new(0)),
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

/// One watcher; dropping it stops the copies made for it.
pub struct Watch {
    pub rx: broadcast::Receiver<Arc<DecisionRecord>>,
    watchers: Arc<AtomicUsize>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Tail {
    /// Copies `d` to the watchers, if there are any.
    pub fn publish(&self, d: &DecisionRecord) {
        if self.watchers.load(Ordering::Relaxed) > 0 {
            // An error only means the last watcher left meanwhile.
            let _ = self.tx.send(Arc::new(d.clone()));
        }
    }

    pub fn watch(&self) -> Watch {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        Watch {
            rx: self.tx.subscribe(),
            watchers: self.watchers.clone(),
        }
    }

    #[cfg(test)]
    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> DecisionRecord {
        DecisionRecord {
            id: id.into(),
            time_ms: 0,
            project: None,
            key_id: None,
            endpoint: None,
            model: None,
            provider: None,
            decision: "allow".into(),
            reason: "ok".into(),
            status: 200,
            prompt_tokens: None,
            completion_tokens: None,
            usage_source: "none".into(),
            cost_nanos: None,
            latency_ms: 0.0,
            stream: false,
            attempts: 0,
            providers_tried: None,
            overrun_nanos: 0,
            team: None,
            key_name: None,
            user: None,
            tags: None,
            cache: None,
            saved_nanos: 0,
        }
    }

    #[test]
    fn a_watcher_sees_what_is_published_after_it_came_and_leaving_stops_the_copies() {
        let t = Tail::default();
        t.publish(&rec("before"));
        let mut w = t.watch();
        assert_eq!(t.watchers(), 1);
        t.publish(&rec("a"));
        t.publish(&rec("b"));
        assert_eq!(w.rx.try_recv().unwrap().id, "a");
        assert_eq!(w.rx.try_recv().unwrap().id, "b");
        assert!(w.rx.try_recv().is_err());
        drop(w);
        assert_eq!(t.watchers(), 0);
    }

    #[test]
    fn a_slow_watcher_loses_the_oldest_and_is_told_how_many() {
        let t = Tail::default();
        let mut w = t.watch();
        for i in 0..CAPACITY + 5 {
            t.publish(&rec(&i.to_string()));
        }
        match w.rx.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => assert_eq!(n, 5),
            other => panic!("expected a lag, got {other:?}"),
        }
        assert_eq!(w.rx.try_recv().unwrap().id, "5");
    }
}
