//! One shape for the stream projections — a deployment, an environment, a
//! project, the routes — and one policy for an event that cannot be read.
//! Each projection says how one event moves it (`Projection::evolve`);
//! folding a stream, and what happens when one of its events cannot be
//! decoded, is written once here (`fold`, `fold_stored`) instead of once
//! per loader.

use std::convert::Infallible;

use slipway_proto::{Envelope, Event};

use crate::deployment::{Deployment, IllegalTransition};
use crate::environment::Environment;
use crate::project::Project;
use crate::routes::Routes;

/// State folded from one stream's events, oldest first, starting from
/// `Default` (the state before the stream's first event: `None` for a
/// deployment or a project, which exist only once requested or created).
///
/// # Unreadable events
///
/// One policy for every projection: an event that cannot be decoded stops
/// the fold with an error naming its stream, version and why
/// (`FoldError::Unreadable`). It is never skipped. A state that silently
/// missed an event — a deployment that never saw its failure, a queue that
/// never saw a request, a project without its newest rule — is wrong in a
/// way nothing downstream can see, and deciding from it would write the
/// mistake into the log. A stream that cannot be read is an operational
/// failure to report (and fix, e.g. by running the binary that wrote it),
/// not something to decide around.
///
/// Where a state is moved one event at a time and cannot stop (the
/// driver's `seen` view, the read models' folder), the same policy takes
/// the form it can: the state is dropped, or the event reported, and the
/// next load of the stream goes through `fold_stored` and names it.
pub trait Projection: Default + Sized {
    /// Why an event cannot move this state: `IllegalTransition` for a
    /// deployment; `Infallible` for folds that take any event.
    type Refusal;

    /// The state after one more event.
    fn evolve(self, event: &Event) -> Result<Self, Self::Refusal>;
}

/// Why a stream could not be folded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FoldError<R> {
    #[error("stream `{stream}` holds an undecodable event at version {version}: {reason}")]
    Unreadable { stream: String, version: u64, reason: String },
    #[error(transparent)]
    Refused(R),
}

/// Folds events already decoded.
pub fn fold<'a, P: Projection>(events: impl IntoIterator<Item = &'a Event>) -> Result<P, P::Refusal> {
    events.into_iter().try_fold(P::default(), P::evolve)
}

/// Folds a stream as stored — (stream, version, envelope), oldest first —
/// decoding each event on the way, under the policy above.
pub fn fold_stored<'a, P: Projection>(stored: impl IntoIterator<Item = (&'a str, u64, &'a Envelope)>) -> Result<P, FoldError<P::Refusal>> {
    let mut state = P::default();
    for (stream, version, envelope) in stored {
        let event =
            envelope.decode::<Event>().map_err(|e| FoldError::Unreadable { stream: stream.to_owned(), version, reason: e.to_string() })?;
        state = state.evolve(&event).map_err(FoldError::Refused)?;
    }
    Ok(state)
}

impl Projection for Option<Deployment> {
    type Refusal = IllegalTransition;

    fn evolve(self, event: &Event) -> Result<Self, IllegalTransition> {
        crate::deployment::evolve(self, event).map(Some)
    }
}

impl Projection for Environment {
    type Refusal = Infallible;

    fn evolve(mut self, event: &Event) -> Result<Self, Infallible> {
        self.apply(event);
        Ok(self)
    }
}

impl Projection for Option<Project> {
    type Refusal = Infallible;

    fn evolve(self, event: &Event) -> Result<Self, Infallible> {
        Ok(crate::project::evolve(self, event))
    }
}

impl Projection for Routes {
    type Refusal = Infallible;

    fn evolve(mut self, event: &Event) -> Result<Self, Infallible> {
        self.apply(event);
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use slipway_proto::envelope::Metadata;
    use slipway_proto::event::DeploymentEnqueued;
    use uuid::Uuid;

    fn stored(stream: &str, event: &Event) -> Envelope {
        let meta = Metadata { correlation_id: Uuid::nil(), causation_id: None, actor: "t".into(), trace: None };
        Envelope::new(Uuid::now_v7(), Utc::now(), stream, event, meta).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_unreadable_event_stops_the_fold_naming_it_and_is_never_skipped() {
        let stream = "environment-shop-live";
        let enqueued = |n| stored(stream, &Event::DeploymentEnqueued(DeploymentEnqueued { deployment_id: Uuid::from_u128(n) }));
        let (first, second) = (enqueued(1), enqueued(2));
        let mut unreadable = enqueued(3);
        unreadable.message_type = "NoSuchEvent".into();

        let whole: Environment = fold_stored([(stream, 1, &first), (stream, 2, &second)]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(whole.queue, [Uuid::from_u128(1), Uuid::from_u128(2)]);
        match fold_stored::<Environment>([(stream, 1, &first), (stream, 2, &unreadable), (stream, 3, &second)]) {
            Err(FoldError::Unreadable { stream: s, version: 2, reason }) => assert!(s == stream && !reason.is_empty()),
            other => panic!("expected the unreadable event named, got {other:?}"),
        }
    }

    #[test]
    fn a_deployment_refusing_an_event_is_a_refusal_not_an_unreadable_event() {
        let stream = "deployment-00000000-0000-0000-0000-000000000001";
        let enqueued = stored(stream, &Event::DeploymentEnqueued(DeploymentEnqueued { deployment_id: Uuid::from_u128(1) }));
        assert!(matches!(fold_stored::<Option<Deployment>>([(stream, 1, &enqueued)]), Err(FoldError::Refused(_))));
        assert!(matches!(fold_stored::<Option<Deployment>>([]), Ok(None)));
    }
}
