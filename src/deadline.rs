//! The deadline of the call being served, carried with the call's future (a task-local):
//! `transport::admission` sets it for every call that has one, and the cold path reads it
//! to refuse work that cannot finish in time (the argon2 pool) instead of starting it.
//!
//! A leaf like `telemetry`: domain code reads the deadline without knowing where it came
//! from, and a future run outside any call (a test, a background job) simply has none.

use std::future::Future;

use tokio::time::Instant;

tokio::task_local! {
    static AT: Instant;
}

/// Runs `future` with `at` as the current call's deadline (none: no deadline).
pub async fn within<F: Future>(at: Option<Instant>, future: F) -> F::Output {
    match at {
        Some(at) => AT.scope(at, future).await,
        None => future.await,
    }
}

/// The deadline of the call whose future is running, if it has one.
pub fn current() -> Option<Instant> {
    AT.try_with(|at| *at).ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_deadline_is_seen_inside_the_call_and_nowhere_else() {
        assert_eq!(current(), None);
        let at = Instant::now() + Duration::from_millis(150);
        let seen = within(Some(at), async {
            tokio::task::yield_now().await;
            current()
        })
        .await;
        assert_eq!(seen, Some(at));
        assert_eq!(within(None, async { current() }).await, None);
        // A task spawned from the call does not inherit it: it is handed over explicitly.
        let spawned = within(Some(at), async { tokio::spawn(async { current() }).await })
            .await
            .unwrap();
        assert_eq!(spawned, None);
    }
}
