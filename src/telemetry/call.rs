//! What one call tells telemetry beyond its status: the decision taken on it (for the
//! decision metric, the span and the request log line) and the token it was about.
//!
//! The transport's call layer opens a [`Call`] for every request and runs the service inside
//! it (a task-local), so the code that decides records its verdict with one line,
//! [`record`], without passing anything around. Outside a call (unit tests, the CLI) the
//! functions here only count metrics. Verdicts are built from bounded labels only: this
//! module knows no domain type.

use std::{
    cell::RefCell,
    collections::HashMap,
    sync::{Arc, Mutex},
};

use opentelemetry::Context;
use tracing::Span;
use uuid::Uuid;

use super::metrics::{DECISIONS_TOTAL, reasons};

tokio::task_local! {
    static CURRENT: Arc<Call>;
}

/// One gRPC call in flight.
#[derive(Debug)]
pub(crate) struct Call {
    /// The call's span (disabled for untraced methods).
    pub(crate) span: Span,
    /// The trace context of the call's gRPC metadata.
    pub(crate) remote: Context,
    note: Mutex<Note>,
}

/// What the service noted about a call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Note {
    /// The last decision recorded.
    pub(crate) verdict: Option<Verdict>,
    /// The token the call was about, once known.
    pub(crate) token_id: Option<Uuid>,
}

impl Call {
    pub(crate) fn new(span: Span, remote: Context) -> Arc<Self> {
        Arc::new(Self {
            span,
            remote,
            note: Mutex::default(),
        })
    }

    pub(crate) fn note(&self) -> Note {
        *self.note.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Note)) {
        f(&mut self.note.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Runs `future` as this call.
    pub(crate) async fn run<F: Future>(self: Arc<Self>, future: F) -> F::Output {
        CURRENT.scope(self, future).await
    }
}

/// The kind of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionKind {
    /// Let through.
    Allow,
    /// Refused.
    Deny,
    /// No decision: the service could not decide (store down, overloaded).
    Error,
}

impl DecisionKind {
    /// The `decision` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Error => "error",
        }
    }
}

/// A decision with its reason: a bounded label value, never anything from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Allow, deny or error.
    pub decision: DecisionKind,
    /// `none` for an allow; a deny reason (the domain's stable denial names, or
    /// [`reasons`]); the kind of error.
    pub reason: &'static str,
    /// The token decided on, when known.
    pub token_id: Option<Uuid>,
}

impl Verdict {
    /// An allow of `token_id`.
    pub fn allow(token_id: Uuid) -> Self {
        Self {
            decision: DecisionKind::Allow,
            reason: reasons::NONE,
            token_id: Some(token_id),
        }
    }

    /// A denial for `reason`.
    pub fn deny(reason: &'static str) -> Self {
        Self {
            decision: DecisionKind::Deny,
            reason,
            token_id: None,
        }
    }

    /// No decision, for `reason` (a [`reasons`] value).
    pub fn error(reason: &'static str) -> Self {
        Self {
            decision: DecisionKind::Error,
            reason,
            token_id: None,
        }
    }

    /// The same verdict, about `token_id`.
    pub fn about(self, token_id: Uuid) -> Self {
        Self {
            token_id: Some(token_id),
            ..self
        }
    }
}

thread_local! {
    /// Decision counters resolved on this thread, by the addresses of their three label
    /// values. Every label value is a `&'static str`, so the map is bounded by the texts in
    /// the binary (the same text at two addresses only makes two handles of one counter).
    /// `counter!` with labels builds, hashes and looks up its key on every call: a visible
    /// share of a warm Check (docs/benchmarks.md).
    static DECISION_COUNTERS: RefCell<HashMap<[(usize, usize); 3], metrics::Counter>> =
        RefCell::default();
}

/// Counts one decision with these labels.
fn count_decision(rpc: &'static str, decision: &'static str, reason: &'static str) {
    let resolve = || metrics::counter!(DECISIONS_TOTAL, "rpc" => rpc, "decision" => decision, "reason" => reason);
    // Before the recorder is installed a handle would be a no-op forever: keep none.
    if !super::metrics::installed() {
        return resolve().increment(1);
    }
    // Address and length: a literal may share its address with a longer one it begins.
    let at = |s: &'static str| (s.as_ptr() as usize, s.len());
    let key = [at(rpc), at(decision), at(reason)];
    DECISION_COUNTERS.with_borrow_mut(|counters| {
        counters.entry(key).or_insert_with(resolve).increment(1);
    });
}

/// Records a decision taken at the entry point `rpc` (a bounded label: `authorize`, `check`,
/// ...): counts it and notes it on the current call (its span and log line).
pub fn record(rpc: &'static str, verdict: Verdict) {
    count_decision(rpc, verdict.decision.as_str(), verdict.reason);
    let _ = CURRENT.try_with(|call| {
        call.update(|note| {
            note.verdict = Some(verdict);
            if verdict.token_id.is_some() {
                note.token_id = verdict.token_id;
            }
        })
    });
}

/// Notes the token the current call is about (its id, never its secret), as soon as the
/// store has found it: a later denial (revoked, expired) then names it in the log.
pub fn note_token_id(id: Uuid) {
    let _ = CURRENT.try_with(|call| call.update(|note| note.token_id = Some(id)));
}

/// Runs `f` on the current call, if there is one.
pub(crate) fn with_current<R>(f: impl FnOnce(&Call) -> R) -> Option<R> {
    CURRENT.try_with(|call| f(call)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_noted_on_the_current_call_only() {
        let id = Uuid::new_v4();
        // Outside a call: counted, nothing to note, no panic.
        record("authorize", Verdict::allow(id));
        let call = Call::new(Span::none(), Context::new());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(call.clone().run(async {
            note_token_id(id);
            record("check", Verdict::deny("revoked"));
        }));
        assert_eq!(
            call.note(),
            Note {
                verdict: Some(Verdict::deny("revoked")),
                token_id: Some(id),
            }
        );
    }

    #[test]
    fn errors_are_no_decision() {
        let verdict = Verdict::error(reasons::OVERLOADED);
        assert_eq!(verdict.decision, DecisionKind::Error);
        assert_eq!(verdict.reason, reasons::OVERLOADED);
    }
}
