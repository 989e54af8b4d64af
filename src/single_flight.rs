//! One call in flight per key: callers that ask while it runs wait for the same answer. The
//! live Service list after a cache miss goes through it, so a caller of /mutate that names
//! Services nobody has cannot turn a burst of requests into a burst of LISTs of a namespace.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};

type Flight<V> = Shared<BoxFuture<'static, V>>;

pub struct SingleFlight<V: Clone> {
    flights: Arc<Mutex<HashMap<String, Flight<V>>>>,
}

impl<V: Clone> Default for SingleFlight<V> {
    fn default() -> Self {
        Self {
            flights: Arc::default(),
        }
    }
}

impl<V: Clone> Clone for SingleFlight<V> {
    fn clone(&self) -> Self {
        Self {
            flights: self.flights.clone(),
        }
    }
}

impl<V: Clone + Send + Sync + 'static> SingleFlight<V> {
    /// The answer of the call in flight for `key`, or of a new one made by `start`. A caller
    /// that gives up (a timeout) does not cancel it: the next caller drives it on, and the
    /// entry goes when it completes.
    pub fn run<F>(&self, key: &str, start: impl FnOnce() -> F) -> Flight<V>
    where
        F: Future<Output = V> + Send + 'static,
    {
        let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(flight) = flights.get(key) {
            return flight.clone();
        }
        let call = start();
        let all = self.flights.clone();
        let owned_key = key.to_string();
        let flight = async move {
            let value = call.await;
            all.lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&owned_key);
            value
        }
        .boxed()
        .shared();
        flights.insert(key.to_string(), flight.clone());
        flight
    }

    /// Calls in flight now (metrics, tests).
    pub fn in_flight(&self) -> usize {
        self.flights.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_call_per_key() {
        let flights = SingleFlight::<usize>::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(tokio::sync::Notify::new());
        let start = |key: &'static str| {
            let calls = calls.clone();
            let release = release.clone();
            flights.run(key, move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                release.notified().await;
                key.len()
            })
        };
        let waiting: Vec<_> = (0..50).map(|_| start("ns-a")).collect();
        let other = start("namespace-b");
        assert_eq!(flights.in_flight(), 2);
        let all = tokio::spawn(async move { futures::future::join_all(waiting).await });
        let other = tokio::spawn(other);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        release.notify_waiters();
        let answers = all.await.unwrap();
        assert_eq!(answers, vec![4; 50]);
        assert_eq!(other.await.unwrap(), 11);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "one call per key");
        assert_eq!(flights.in_flight(), 0, "done flights are forgotten");
        // A later caller starts a new call.
        let again = flights.run("ns-a", || async { 7 });
        assert_eq!(again.await, 7);
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_does_not_cancel_the_call() {
        let flights = SingleFlight::<u8>::default();
        let slow = flights.run("ns", || async {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            1
        });
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(10), slow)
                .await
                .is_err()
        );
        // The next caller joins the same call (its start is not used) and gets its answer.
        let joined = flights.run("ns", || async { 2 });
        assert_eq!(joined.await, 1);
        assert_eq!(flights.in_flight(), 0);
    }
}
