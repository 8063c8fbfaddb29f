//! What one gRPC call tells telemetry beyond its status: the decision taken on it (for the
//! decision metric, the span and the request log line) and the token it was about.
//!
//! The gRPC layer ([`super::grpc`]) opens a call record for every request and runs the service
//! inside it (a task-local), so an adapter records its decision with one line,
//! [`record`], without passing anything around. Outside a call (unit tests, the CLI) the
//! functions here only count metrics.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use opentelemetry::{Context, trace::TraceContextExt};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use super::{context, metrics::DECISIONS_TOTAL, metrics::reasons};
use crate::{
    authorize::{Authenticated, Decision, Denial},
    error::Error,
};

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

/// Which entry point decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// AuthorizationService/Authorize.
    Authorize,
    /// Envoy ext_authz Check.
    Check,
    /// TokenService caller authentication.
    CallerAuth,
    /// AuthorizationService/WhoAmI.
    WhoAmI,
}

impl Entry {
    /// The `rpc` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authorize => "authorize",
            Self::Check => "check",
            Self::CallerAuth => "caller_auth",
            Self::WhoAmI => "who_am_i",
        }
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
    /// `none` for an allow; a deny reason ([`Denial::as_str`] or [`reasons`]); the kind of
    /// error.
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

    /// A denial.
    pub fn denial(denial: &Denial) -> Self {
        Self {
            token_id: match denial {
                Denial::InsufficientScope { principal, .. } => Some(principal.token_id),
                _ => None,
            },
            ..Self::deny(denial.as_str())
        }
    }

    /// No decision, because of `err`.
    pub fn error(err: &Error) -> Self {
        Self {
            decision: DecisionKind::Error,
            reason: match err {
                Error::Unavailable => reasons::UNAVAILABLE,
                Error::ResourceExhausted(_) => reasons::OVERLOADED,
                _ => reasons::INTERNAL,
            },
            token_id: None,
        }
    }

    /// The verdict of `Authorizer::authorize`.
    pub fn of_decision(result: &Result<Decision, Error>) -> Self {
        match result {
            Ok(Decision::Allow(principal)) => Self::allow(principal.token_id),
            Ok(Decision::Deny(denial)) => Self::denial(denial),
            Err(e) => Self::error(e),
        }
    }

    /// The verdict of `Authorizer::authenticate`.
    pub fn of_authentication(result: &Result<Result<Authenticated, Denial>, Error>) -> Self {
        match result {
            Ok(Ok(authenticated)) => Self::allow(authenticated.principal.token_id),
            Ok(Err(denial)) => Self::denial(denial),
            Err(e) => Self::error(e),
        }
    }
}

/// Records a decision taken at `entry`: counts it and notes it on the current call (its
/// span and log line).
pub fn record(entry: Entry, verdict: Verdict) {
    metrics::counter!(
        DECISIONS_TOTAL,
        "rpc" => entry.as_str(),
        "decision" => verdict.decision.as_str(),
        "reason" => verdict.reason,
    )
    .increment(1);
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

/// The span of the current Check call, its parent chosen by [`context::check_parent`] from
/// the checked request's `headers` and the call's gRPC metadata. The gRPC layer leaves a
/// Check span unentered until this picks its parent; the caller runs the decision in it.
pub fn check_span(headers: Option<&HashMap<String, String>>) -> Span {
    CURRENT
        .try_with(|call| {
            let http = headers.map(context::from_http_headers).unwrap_or_default();
            let choice = context::check_parent(&call.remote, &http);
            if let Some(parent) = choice.parent {
                // Fails only when tracing is off (no OpenTelemetry layer): nothing to join.
                let _ = call
                    .span
                    .set_parent(Context::new().with_remote_span_context(parent));
            }
            if let Some(link) = choice.link {
                call.span.add_link(link);
            }
            call.span.clone()
        })
        .unwrap_or_else(|_| Span::current())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_noted_on_the_current_call_only() {
        let id = Uuid::new_v4();
        // Outside a call: counted, nothing to note, no panic.
        record(Entry::Authorize, Verdict::allow(id));
        let call = Call::new(Span::none(), Context::new());
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(call.clone().run(async {
            note_token_id(id);
            record(Entry::Check, Verdict::deny("revoked"));
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
        assert_eq!(
            Verdict::error(&Error::Unavailable).decision,
            DecisionKind::Error
        );
        assert_eq!(
            Verdict::error(&Error::ResourceExhausted("full")).reason,
            reasons::OVERLOADED
        );
        assert_eq!(Verdict::error(&Error::Internal).reason, reasons::INTERNAL);
    }
}
