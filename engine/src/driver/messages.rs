//! Building the messages the decider's decisions become: ids, time,
//! causation and trace context for events and commands, and a planned
//! publish span per dispatched command, recorded once the append commits.

use slipway_proto::envelope::Metadata;
use slipway_proto::event::{StepDispatched, ROUTES_STREAM};
use slipway_proto::{Command, Envelope, Event};
use slipway_store::event_store::Outgoing;
use slipway_telemetry::trace::PlannedSpan;
use uuid::Uuid;

use super::Driver;
use crate::decider::Decision;

impl Driver {
    /// Gives decisions ids, time, causation and trace context. Events keep
    /// their cause's trace context; each dispatched command gets a planned
    /// `<queue> publish` span (a child of the cause's span) whose context
    /// goes into the command and its `StepDispatched`.
    pub(super) fn materialise(&self, stream: &str, env_stream: &str, cause: &Envelope, decisions: Vec<Decision>) -> Materialised {
        let now = self.options.clock.now();
        let meta = || {
            let mut m = Metadata::caused_by(cause);
            m.actor = "engine".into();
            m
        };
        let mut out = Materialised::default();
        let Materialised { events, environment, routes, commands, spans } = &mut out;
        for decision in decisions {
            // A command sent again keeps the id it was first sent with.
            let decision_id = match &decision {
                Decision::DispatchAgain { command_id, .. } => Some(*command_id),
                _ => None,
            };
            match decision {
                Decision::WakeAt(_) => {}
                Decision::Record(event) => events.extend(Envelope::new(Uuid::now_v7(), now, stream, &event, meta()).ok()),
                Decision::RecordOnEnvironment(event) => {
                    environment.extend(Envelope::new(Uuid::now_v7(), now, env_stream, &event, meta()).ok())
                }
                Decision::RecordOnRoutes(event) => routes.extend(Envelope::new(Uuid::now_v7(), now, ROUTES_STREAM, &event, meta()).ok()),
                Decision::Dispatch(command) | Decision::DispatchAgain { command, .. } => {
                    let id = decision_id.unwrap_or_else(Uuid::now_v7);
                    let span = self.publish_span(cause, &command, id);
                    let mut traced = meta();
                    traced.trace = Some(span.trace_context());
                    let Ok(envelope) = Envelope::new(id, now, stream, &command, traced.clone()) else { continue };
                    if let Command::RunStep(run) = &command {
                        let dispatched = Event::StepDispatched(StepDispatched {
                            step: run.step,
                            command_id: envelope.id,
                            attempt: run.attempt,
                            // A watch runs until its window ends, then has the step timeout to report.
                            deadline: Some(run.context.watch_until.map_or(now, |u| u.max(now)) + self.options.step_timeout(run.step)),
                            dispatched_at: Some(now),
                        });
                        // Its id says what was sent: a worker checks it (see `dispatch_id`).
                        let id = slipway_proto::command::dispatch_id(envelope.id, envelope.to_json().as_bytes());
                        events.extend(Envelope::new(id, now, stream, &dispatched, traced).ok());
                    }
                    commands.push(Outgoing { queue: command.queue(), envelope });
                    spans.push(span);
                }
            }
        }
        out
    }

    /// The `<queue> publish` span of dispatching `command` (message `id`),
    /// following the OpenTelemetry messaging conventions.
    pub(super) fn publish_span(&self, cause: &Envelope, command: &Command, id: Uuid) -> PlannedSpan {
        let queue = command.queue();
        let deployment = command.deployment_id();
        PlannedSpan::child_of(cause.trace.as_ref(), format!("{queue} publish"), slipway_telemetry::trace::Kind::Producer)
            .with_attribute("messaging.system", self.options.messaging_system)
            .with_attribute("messaging.operation.type", "send")
            .with_attribute("messaging.operation.name", "publish")
            .with_attribute("messaging.destination.name", queue)
            .with_attribute("messaging.message.id", id.to_string())
            .with_attribute("slipway.deployment.id", deployment.to_string())
            .with_attribute("slipway.step", command.step().to_string())
    }
}

/// Decisions with ids and metadata, by the stream they go to, and the
/// publish spans of the commands.
#[derive(Default)]
pub(super) struct Materialised {
    pub(super) events: Vec<Envelope>,
    pub(super) environment: Vec<Envelope>,
    pub(super) routes: Vec<Envelope>,
    pub(super) commands: Vec<Outgoing>,
    pub(super) spans: Vec<PlannedSpan>,
}

impl Materialised {
    /// The append committed: the dispatches happened (record their spans)
    /// and a deployment that ended is counted.
    pub(super) fn committed(self) {
        for span in self.spans {
            span.record();
        }
        let metrics = slipway_telemetry::metrics::global();
        for e in &self.events {
            if let Some(outcome) = slipway_telemetry::metrics::deployment_outcome(&e.message_type) {
                metrics.deployment_finished(outcome);
            }
        }
    }
}
