//! Slipway's workers: the loop that takes a step's command from its queue,
//! runs the step, records the outcome in the store and only then acks
//! (`worker`), the store calls it makes in groups under load (`group`), and
//! the executors that do each step's work (`steps`).

pub mod group;
pub mod host;
pub mod http;
pub mod steps;
pub mod worker;

pub use steps::Executor;
pub use worker::{run, WorkerOptions};
