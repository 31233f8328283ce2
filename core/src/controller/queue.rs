//! The work queue of the control loops: one entry per key, each due at a
//! time; adding a key that is already waiting keeps the earlier time. A key
//! taken by a worker is "in flight": adding it again while it runs makes it
//! due once the worker is done, never twice at once. Failed keys come back
//! after an exponential back-off, reset when they succeed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Back-off bounds for failed keys.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(5),
            max: Duration::from_secs(300),
        }
    }
}

struct State<K> {
    /// When each waiting key is due.
    due: HashMap<K, Instant>,
    /// Waiting keys by due time (ties broken by insertion order).
    order: BTreeMap<(Instant, u64), K>,
    /// Keys being reconciled now, with a due time if re-added meanwhile.
    in_flight: HashMap<K, Option<Instant>>,
    /// Consecutive failures per key.
    failures: HashMap<K, u32>,
    sequence: u64,
    closed: bool,
}

/// A de-duplicating delay queue of keys. Cheap to clone.
pub struct Queue<K> {
    state: Arc<Mutex<State<K>>>,
    wake: Arc<Notify>,
    backoff: Backoff,
}

impl<K> Clone for Queue<K> {
    fn clone(&self) -> Self {
        Queue {
            state: self.state.clone(),
            wake: self.wake.clone(),
            backoff: self.backoff,
        }
    }
}

impl<K: Clone + Eq + Hash + Send + 'static> Queue<K> {
    /// An empty queue with the given back-off.
    pub fn new(backoff: Backoff) -> Self {
        Queue {
            state: Arc::new(Mutex::new(State {
                due: HashMap::new(),
                order: BTreeMap::new(),
                in_flight: HashMap::new(),
                failures: HashMap::new(),
                sequence: 0,
                closed: false,
            })),
            wake: Arc::new(Notify::new()),
            backoff,
        }
    }

    /// Makes `key` due now.
    pub fn add(&self, key: K) {
        self.add_after(key, Duration::ZERO);
    }

    /// Makes `key` due after `delay`, unless it is already due earlier.
    pub fn add_after(&self, key: K, delay: Duration) {
        let at = Instant::now() + delay;
        let mut state = self.state.lock().expect("queue lock");
        if let Some(pending) = state.in_flight.get_mut(&key) {
            *pending = Some(pending.map_or(at, |p| p.min(at)));
            return;
        }
        Self::schedule(&mut state, key, at);
        drop(state);
        self.wake.notify_one();
    }

    fn schedule(state: &mut State<K>, key: K, at: Instant) {
        if let Some(&current) = state.due.get(&key) {
            if current <= at {
                return;
            }
            state.order.retain(|_, k| k != &key);
        }
        state.sequence += 1;
        let seq = state.sequence;
        state.due.insert(key.clone(), at);
        state.order.insert((at, seq), key);
    }

    /// Waits for the next due key and marks it in flight; `None` once the
    /// queue is closed.
    pub async fn next(&self) -> Option<K> {
        loop {
            let wait = {
                let mut state = self.state.lock().expect("queue lock");
                if state.closed {
                    return None;
                }
                match state
                    .order
                    .first_key_value()
                    .map(|((at, seq), _)| (*at, *seq))
                {
                    Some((at, seq)) if at <= Instant::now() => {
                        let key = state.order.remove(&(at, seq)).expect("first entry exists");
                        state.due.remove(&key);
                        state.in_flight.insert(key.clone(), None);
                        return Some(key);
                    }
                    Some((at, _)) => Some(at),
                    None => None,
                }
            };
            let notified = self.wake.notified();
            match wait {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Marks `key` done. On failure it comes back after its back-off; on
    /// success its back-off resets. A re-add that arrived while it ran is
    /// honoured (the earlier of the two times wins).
    pub fn done(&self, key: &K, succeeded: bool) {
        let mut state = self.state.lock().expect("queue lock");
        let readded = state.in_flight.remove(key).flatten();
        let retry = if succeeded {
            state.failures.remove(key);
            None
        } else {
            let failures = state.failures.entry(key.clone()).or_insert(0);
            *failures += 1;
            let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(30));
            let delay = self
                .backoff
                .initial
                .saturating_mul(factor)
                .min(self.backoff.max);
            Some(Instant::now() + delay)
        };
        let at = match (readded, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(at) = at {
            Self::schedule(&mut state, key.clone(), at);
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Keys waiting (not counting those in flight).
    pub fn len(&self) -> usize {
        self.state.lock().expect("queue lock").due.len()
    }

    /// True when no key is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys currently being reconciled.
    pub fn in_flight(&self) -> HashSet<K> {
        self.state
            .lock()
            .expect("queue lock")
            .in_flight
            .keys()
            .cloned()
            .collect()
    }

    /// Closes the queue: `next` returns `None` from now on.
    pub fn close(&self) {
        self.state.lock().expect("queue lock").closed = true;
        self.wake.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> Queue<&'static str> {
        Queue::new(Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(80),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn queue_dedupe_should_keep_earlier_item() {
        let q = queue();
        q.add_after("a", Duration::from_secs(10));
        q.add_after("a", Duration::from_secs(1));
        q.add_after("a", Duration::from_secs(5));
        assert_eq!(q.len(), 1);
        let started = Instant::now();
        assert_eq!(q.next().await, Some("a"));
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_in_flight_is_not_handed_out_twice_but_comes_back_after_done() {
        let q = queue();
        q.add("a");
        assert_eq!(q.next().await, Some("a"));
        q.add("a");
        q.add("b");
        assert_eq!(q.next().await, Some("b"), "a is in flight, b is next");
        q.done(&"b", true);
        q.done(&"a", true);
        assert_eq!(
            q.next().await,
            Some("a"),
            "the re-add made while it ran is kept"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_up_to_the_max_and_reset_on_success() {
        let q = queue();
        q.add("a");
        let key = q.next().await.unwrap();
        let mut delays = Vec::new();
        for _ in 0..5 {
            let failed_at = Instant::now();
            q.done(&key, false);
            assert_eq!(q.next().await, Some(key));
            delays.push(failed_at.elapsed().as_millis());
        }
        assert_eq!(delays, vec![10, 20, 40, 80, 80]);
        q.done(&key, true);
        q.add(key);
        let key = q.next().await.unwrap();
        let failed_at = Instant::now();
        q.done(&key, false);
        q.next().await.unwrap();
        assert_eq!(
            failed_at.elapsed().as_millis(),
            10,
            "success reset the back-off"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn close_ends_waiting_workers() {
        let q = queue();
        let worker = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::task::yield_now().await;
        q.close();
        assert_eq!(worker.await.unwrap(), None);
    }
}
