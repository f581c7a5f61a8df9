//! The process's Prometheus metrics: one global registry, the metric
//! families Slipway records, and `render()` for `/metrics` (OpenMetrics
//! text). Each part of Slipway records what it sees, so which series a
//! process shows depends on the parts it runs: the engine counts finished
//! deployments and samples the lags, workers time steps, routers count
//! requests, and any process that has the queue samples its depth.

use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The `Content-Type` of `render()`'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    step: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriptionLabel {
    subscription: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    provider: String,
    outcome: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn step_histogram() -> Histogram {
    // 50 ms to about 7 minutes: a skipped check to a cold build.
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

/// A registry with Slipway's metric families. The process uses the global
/// one (`global()`); tests make their own.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    deployments: Family<OutcomeLabel, Counter>,
    step_duration: HistogramFamily<StepLabels>,
    queue_depth: Family<QueueLabel, Gauge>,
    outbox_lag: Gauge,
    subscription_lag: Family<SubscriptionLabel, Gauge>,
    router_requests: Family<ClassLabel, Counter>,
    /// `router_requests`' counter of each status class (`class_index`),
    /// found once: a router counts every response, and looking the label
    /// up each time cost an allocation and a hash.
    router_classes: [OnceLock<Counter>; CLASSES],
    router_upstream_errors: Family<KindLabel, Counter>,
    router_refused: Family<ReasonLabel, Counter>,
    router_timeouts: Family<KindLabel, Counter>,
    router_tls_handshake_failures: Counter,
    router_ejections: Counter,
    certificate_renewal_failures: Counter,
    certificates_failing: Gauge,
    webhooks: Family<WebhookLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("slipway");
        let deployments = Family::<OutcomeLabel, Counter>::default();
        registry.register("deployments", "Deployments finished, by outcome (succeeded, failed)", deployments.clone());
        let step_duration = HistogramFamily::<StepLabels>::new_with_constructor(step_histogram);
        registry.register(
            "step_duration_seconds",
            "Time a worker spent running a step, by step and outcome (succeeded, skipped, failed)",
            step_duration.clone(),
        );
        let queue_depth = Family::<QueueLabel, Gauge>::default();
        registry.register("queue_depth", "Commands waiting in each step queue (ready, not delivered)", queue_depth.clone());
        let outbox_lag = Gauge::default();
        registry.register("outbox_lag", "Commands in the outbox not yet relayed to the queue", outbox_lag.clone());
        let subscription_lag = Family::<SubscriptionLabel, Gauge>::default();
        registry.register(
            "subscription_lag",
            "Events recorded after a subscription's checkpoint (how far the engine is behind the head)",
            subscription_lag.clone(),
        );
        let router_requests = Family::<ClassLabel, Counter>::default();
        registry.register("router_requests", "Requests a router answered, by status class (2xx, 3xx, 4xx, 5xx)", router_requests.clone());
        let router_upstream_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "router_upstream_errors",
            "Requests a router could not forward because of the upstream (connect: never reached it; response: failed mid-way)",
            router_upstream_errors.clone(),
        );
        let router_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "router_connections_refused",
            "Client connections a router closed at once, by the cap they were over (global, per_ip)",
            router_refused.clone(),
        );
        let router_timeouts = Family::<KindLabel, Counter>::default();
        registry.register(
            "router_timeouts",
            "Client connections or requests a router cut off, by timeout (header, idle, body, request)",
            router_timeouts.clone(),
        );
        let router_tls_handshake_failures = Counter::default();
        registry.register(
            "router_tls_handshake_failures",
            "TLS handshakes a router's HTTPS listener failed (no certificate for the name, a bad hello)",
            router_tls_handshake_failures.clone(),
        );
        let router_ejections = Counter::default();
        registry.register(
            "router_upstream_ejections",
            "Times a router took an upstream out of its rotation after a failed connection (it comes back on its own after a while)",
            router_ejections.clone(),
        );
        let certificate_renewal_failures = Counter::default();
        registry.register(
            "certificate_renewal_failures",
            "ACME orders (first certificates and renewals) that failed in this engine",
            certificate_renewal_failures.clone(),
        );
        let certificates_failing = Gauge::default();
        registry.register(
            "certificates_failing",
            "Domains whose latest ACME order failed (an old certificate keeps serving until it expires)",
            certificates_failing.clone(),
        );
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhooks",
            "Push webhooks answered, by provider and outcome (deployed, skipped, duplicate, ignored, unauthorized, \
             bad_request, too_large, failed); an unauthorized one records nothing else",
            webhooks.clone(),
        );
        Metrics {
            registry,
            deployments,
            step_duration,
            queue_depth,
            outbox_lag,
            subscription_lag,
            router_requests,
            router_classes: Default::default(),
            router_upstream_errors,
            router_refused,
            router_timeouts,
            router_tls_handshake_failures,
            router_ejections,
            certificate_renewal_failures,
            certificates_failing,
            webhooks,
        }
    }

    /// The registry as OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// A deployment finished with `outcome` (`succeeded`, `failed`, ...).
    pub fn deployment_finished(&self, outcome: &str) {
        self.deployments.get_or_create(&OutcomeLabel { outcome: outcome.to_owned() }).inc();
    }

    /// A worker ran `step` for `took`, with `outcome`.
    pub fn step_finished(&self, step: &str, outcome: &str, took: Duration) {
        let labels = StepLabels { step: step.to_owned(), outcome: outcome.to_owned() };
        self.step_duration.get_or_create(&labels).observe(took.as_secs_f64());
    }

    pub fn set_queue_depth(&self, queue: &str, depth: u64) {
        self.queue_depth.get_or_create(&QueueLabel { queue: queue.to_owned() }).set(saturating(depth));
    }

    pub fn set_outbox_lag(&self, lag: u64) {
        self.outbox_lag.set(saturating(lag));
    }

    pub fn set_subscription_lag(&self, subscription: &str, lag: u64) {
        self.subscription_lag.get_or_create(&SubscriptionLabel { subscription: subscription.to_owned() }).set(saturating(lag));
    }

    /// A router answered with `status`.
    pub fn router_response(&self, status: u16) {
        let counter = self.router_classes[class_index(status)]
            .get_or_init(|| self.router_requests.get_or_create(&ClassLabel { class: status_class(status).to_owned() }).clone());
        counter.inc();
    }

    /// A push webhook from `provider` was answered with `outcome`.
    pub fn webhook(&self, provider: &str, outcome: &str) {
        self.webhooks.get_or_create(&WebhookLabels { provider: provider.to_owned(), outcome: outcome.to_owned() }).inc();
    }

    /// A router could not forward a request: `connect` or `response`.
    pub fn router_upstream_error(&self, kind: &str) {
        self.router_upstream_errors.get_or_create(&KindLabel { kind: kind.to_owned() }).inc();
    }

    /// A router closed a client connection at once: over the `global` or the `per_ip` cap.
    pub fn router_refused(&self, reason: &str) {
        self.router_refused.get_or_create(&ReasonLabel { reason: reason.to_owned() }).inc();
    }

    /// A router cut a client off: `header`, `idle`, `body` or `request`.
    pub fn router_timeout(&self, kind: &str) {
        self.router_timeouts.get_or_create(&KindLabel { kind: kind.to_owned() }).inc();
    }
}

impl Metrics {
    /// A TLS handshake on a router's HTTPS listener failed.
    pub fn router_tls_handshake_failed(&self) {
        self.router_tls_handshake_failures.inc();
    }

    /// A router took an upstream out of rotation (it was in).
    pub fn router_upstream_ejected(&self) {
        self.router_ejections.inc();
    }

    /// How many times routers in this process took an upstream out of rotation.
    pub fn router_upstream_ejections(&self) -> u64 {
        self.router_ejections.get()
    }

    /// An ACME order failed.
    pub fn certificate_renewal_failed(&self) {
        self.certificate_renewal_failures.inc();
    }

    /// How many domains' latest ACME order failed.
    pub fn set_certificates_failing(&self, domains: u64) {
        self.certificates_failing.set(saturating(domains));
    }
}

fn saturating(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `2xx` for 200..=299 and so on; `other` outside 100..=599.
pub fn status_class(status: u16) -> &'static str {
    ["1xx", "2xx", "3xx", "4xx", "5xx", "other"][class_index(status)]
}

/// How many status classes `status_class` knows.
const CLASSES: usize = 6;

/// `status_class`'s class as an index: 0 for 1xx ... 4 for 5xx, 5 for other.
fn class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100 - 1),
        _ => CLASSES - 1,
    }
}

/// The outcome a deployment-stream event type records, if it ends the deployment.
pub fn deployment_outcome(event_type: &str) -> Option<&'static str> {
    match event_type {
        "DeploymentSucceeded" => Some("succeeded"),
        "DeploymentFailed" => Some("failed"),
        "DeploymentCancelled" => Some("cancelled"),
        _ => None,
    }
}

static GLOBAL: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// This process's metrics.
pub fn global() -> &'static Metrics {
    &GLOBAL
}

/// This process's metrics as OpenMetrics text (`GET /metrics`).
pub fn render() -> String {
    GLOBAL.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn every_family_is_described_once_it_has_a_series() {
        let m = Metrics::new();
        let empty = m.render();
        // Labelled families show nothing until their first series.
        assert!(!empty.contains("slipway_deployments"), "{empty}");
        assert_eq!(line(&empty, "slipway_outbox_lag "), Some("slipway_outbox_lag 0"));
        m.deployment_finished("succeeded");
        m.step_finished("build", "succeeded", Duration::from_secs(1));
        m.set_queue_depth("q", 0);
        m.set_subscription_lag("engine", 0);
        m.router_response(200);
        m.router_upstream_error("connect");
        m.router_refused("per_ip");
        m.router_timeout("header");
        m.webhook("github", "unauthorized");
        let text = m.render();
        for name in [
            "slipway_deployments",
            "slipway_step_duration_seconds",
            "slipway_queue_depth",
            "slipway_outbox_lag",
            "slipway_subscription_lag",
            "slipway_router_requests",
            "slipway_router_upstream_errors",
            "slipway_router_connections_refused",
            "slipway_router_timeouts",
            "slipway_webhooks",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing:\n{text}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name} has no help:\n{text}");
        }
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    #[test]
    fn counters_count_by_label() {
        let m = Metrics::new();
        m.deployment_finished("succeeded");
        m.deployment_finished("succeeded");
        m.deployment_finished("failed");
        m.router_response(200);
        m.router_response(204);
        m.router_response(502);
        m.router_upstream_error("connect");
        m.webhook("github", "unauthorized");
        m.webhook("github", "unauthorized");
        let text = m.render();
        assert_eq!(
            line(&text, "slipway_webhooks_total{provider=\"github\",outcome=\"unauthorized\"}"),
            Some("slipway_webhooks_total{provider=\"github\",outcome=\"unauthorized\"} 2")
        );
        assert_eq!(
            line(&text, "slipway_deployments_total{outcome=\"succeeded\"}"),
            Some("slipway_deployments_total{outcome=\"succeeded\"} 2")
        );
        assert_eq!(line(&text, "slipway_deployments_total{outcome=\"failed\"}"), Some("slipway_deployments_total{outcome=\"failed\"} 1"));
        assert_eq!(line(&text, "slipway_router_requests_total{class=\"2xx\"}"), Some("slipway_router_requests_total{class=\"2xx\"} 2"));
        assert_eq!(line(&text, "slipway_router_requests_total{class=\"5xx\"}"), Some("slipway_router_requests_total{class=\"5xx\"} 1"));
        assert_eq!(
            line(&text, "slipway_router_upstream_errors_total{kind=\"connect\"}"),
            Some("slipway_router_upstream_errors_total{kind=\"connect\"} 1")
        );
    }

    #[test]
    fn gauges_hold_the_last_sample() {
        let m = Metrics::new();
        m.set_queue_depth("slipway.step.build", 7);
        m.set_queue_depth("slipway.step.build", 3);
        m.set_outbox_lag(12);
        m.set_subscription_lag("engine", u64::MAX);
        let text = m.render();
        assert_eq!(line(&text, "slipway_queue_depth{"), Some("slipway_queue_depth{queue=\"slipway.step.build\"} 3"));
        assert_eq!(line(&text, "slipway_outbox_lag "), Some("slipway_outbox_lag 12"));
        assert_eq!(
            line(&text, "slipway_subscription_lag{"),
            Some(format!("slipway_subscription_lag{{subscription=\"engine\"}} {}", i64::MAX).as_str())
        );
    }

    #[test]
    fn step_durations_land_in_buckets() {
        let m = Metrics::new();
        m.step_finished("build", "succeeded", Duration::from_millis(30));
        m.step_finished("build", "succeeded", Duration::from_secs(3));
        let text = m.render();
        let labels = "step=\"build\",outcome=\"succeeded\"";
        assert_eq!(
            line(&text, &format!("slipway_step_duration_seconds_count{{{labels}}}")),
            Some(format!("slipway_step_duration_seconds_count{{{labels}}} 2").as_str())
        );
        // 30 ms is under the first bucket (50 ms); 3 s is not.
        let first = format!("slipway_step_duration_seconds_bucket{{le=\"0.05\",{labels}}}");
        assert_eq!(line(&text, &first), Some(format!("{first} 1").as_str()), "{text}");
        let inf = format!("slipway_step_duration_seconds_bucket{{le=\"+Inf\",{labels}}}");
        assert_eq!(line(&text, &inf), Some(format!("{inf} 2").as_str()));
    }

    #[test]
    fn status_classes_and_outcomes() {
        assert_eq!(
            [status_class(99), status_class(100), status_class(204), status_class(301), status_class(404), status_class(599)],
            ["other", "1xx", "2xx", "3xx", "4xx", "5xx"]
        );
        assert_eq!([status_class(600), status_class(0), status_class(u16::MAX)], ["other"; 3]);
        assert_eq!(deployment_outcome("DeploymentSucceeded"), Some("succeeded"));
        assert_eq!(deployment_outcome("DeploymentFailed"), Some("failed"));
        assert_eq!(deployment_outcome("StepFailed"), None);
    }
}
