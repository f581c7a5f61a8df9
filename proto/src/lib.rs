//! The language every part of Slipway speaks: the envelope that wraps every
//! command and event, the commands and events of the deployment pipeline, and
//! their JSON encoding. Data only: no I/O, so the decider, the store, the
//! workers and an offline auditor all agree on what a message means.

pub mod command;
pub mod config;
pub mod envelope;
pub mod event;
pub mod host;
pub mod placement;
pub mod step;
pub mod stream;
mod upcast;

pub use command::Command;
pub use envelope::{DecodeError, Envelope, Message, TraceContext};
pub use event::Event;
pub use step::Step;
pub use stream::StreamId;
