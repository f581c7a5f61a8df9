//! The pipeline's steps, in the seed's order, and the queue each one is
//! consumed from. One enum so that the decider, the queues and the CLI name a
//! step the same way.

use serde::{Deserialize, Serialize};

/// A step of the deployment pipeline (seed: "Deployment steps"), plus the
/// cutover and retirement steps that follow a healthy release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    CheckServices,
    Checkout,
    Build,
    Deploy,
    Release,
    Processes,
    HealthCheck,
    Cutover,
    /// After the cutover: the new release is watched for `[web] watch`
    /// while the old one stays up, ready to take the traffic back.
    Watch,
    Retire,
    Cleanup,
}

impl Step {
    /// The seven steps of the seed, in order.
    pub const PIPELINE: [Step; 7] =
        [Step::CheckServices, Step::Checkout, Step::Build, Step::Deploy, Step::Release, Step::Processes, Step::HealthCheck];

    /// Every step that has a worker queue (the cutover is the engine's and
    /// the routers' work, not a worker's).
    pub const ALL: [Step; 10] = [
        Step::CheckServices,
        Step::Checkout,
        Step::Build,
        Step::Deploy,
        Step::Release,
        Step::Processes,
        Step::HealthCheck,
        Step::Watch,
        Step::Retire,
        Step::Cleanup,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::CheckServices => "check_services",
            Step::Checkout => "checkout",
            Step::Build => "build",
            Step::Deploy => "deploy",
            Step::Release => "release",
            Step::Processes => "processes",
            Step::HealthCheck => "health_check",
            Step::Cutover => "cutover",
            Step::Watch => "watch",
            Step::Retire => "retire",
            Step::Cleanup => "cleanup",
        }
    }

    /// The durable queue this step's workers consume.
    pub fn queue(self) -> String {
        format!("slipway.step.{}", self.as_str())
    }

    /// The step after this one in the pipeline, `None` after the health check.
    pub fn next(self) -> Option<Step> {
        let i = Step::PIPELINE.iter().position(|s| *s == self)?;
        Step::PIPELINE.get(i + 1).copied()
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Step {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Step::ALL.into_iter().find(|step| step.as_str() == s).ok_or_else(|| {
            let known: Vec<_> = Step::ALL.iter().map(|s| s.as_str()).collect();
            format!("unknown step `{s}`; expected one of: {}", known.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipeline_order_follows_the_seed() {
        assert_eq!(Step::CheckServices.next(), Some(Step::Checkout));
        assert_eq!(Step::Processes.next(), Some(Step::HealthCheck));
        assert_eq!(Step::HealthCheck.next(), None);
        assert_eq!(Step::Cutover.next(), None);
    }

    #[test]
    fn names_round_trip_and_unknown_names_are_explained() {
        for step in Step::ALL {
            assert_eq!(step.as_str().parse::<Step>(), Ok(step));
        }
        let err = "compile".parse::<Step>().unwrap_err();
        assert!(err.contains("`compile`") && err.contains("health_check"), "{err}");
    }
}
