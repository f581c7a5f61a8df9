//! Notifications, pure: which recorded events are worth a notification
//! (`notice`), which subscriptions want one (`Subscription::wants`), the
//! body each target takes (Slipway's signed JSON, Slack's and Discord's
//! incoming-webhook shapes), the signature, when to try again and when to
//! give up (`Backoff::next`), and what a subscription's own stream says
//! about how far it got (`Progress`). The effects — reading the log,
//! posting, recording each attempt — are in `notifier`.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use slipway_proto::event::{
    DeliveryOutcome, LiveState, LogPosition, NotificationKind, NotificationSubscribed, NotificationTarget, NotifiedEvent,
};
use slipway_proto::Event;
use uuid::Uuid;

use crate::deployment::failure_text;

/// The header holding the unix time (seconds) a webhook was signed at.
pub const TIMESTAMP_HEADER: &str = "x-slipway-timestamp";
/// The header holding `v1=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub const SIGNATURE_HEADER: &str = "x-slipway-signature";
/// The notified event's id: the same for every attempt, so a receiver can
/// drop a repeat (delivery is at least once).
pub const DELIVERY_HEADER: &str = "x-slipway-delivery";
/// The notification's kind (`deployment.failed`).
pub const KIND_HEADER: &str = "x-slipway-event";
/// What every signing secret starts with.
pub const SECRET_PREFIX: &str = "slwn_";
/// Discord refuses a message longer than this.
const DISCORD_MAX: usize = 2000;

/// What a deployment's later events need from its request: they do not
/// name their project and environment themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentContext {
    pub project: String,
    pub environment: String,
    pub git_ref: String,
}

/// The deployment an event is about, as the notifier found it.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub id: Uuid,
    pub context: &'a DeploymentContext,
    /// A step of it had been dispatched when the event was recorded. A
    /// failure names its step only then (`deployment::failure_text`): one
    /// rejected or cancelled before its first step did not fail at it.
    pub started: bool,
}

/// One notification, before it takes a target's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub kind: NotificationKind,
    pub event_id: Uuid,
    pub at: DateTime<Utc>,
    /// `None`: the installation's own (a certificate).
    pub project: Option<String>,
    pub environment: Option<String>,
    pub deployment: Option<Uuid>,
    /// One line, for people (Slack, Discord).
    pub summary: String,
    /// The event's facts that matter, for programs.
    pub details: serde_json::Value,
}

/// The deployment an event of a deployment's stream (or a supervision
/// record) is about, if any: what a notice needs its context for.
pub fn deployment_of(stream: &str, event: &Event) -> Option<Uuid> {
    match event {
        Event::ContainerSupervised(s) => Some(s.deployment_id),
        Event::ReplicasObserved(r) => Some(r.deployment_id),
        _ => slipway_proto::StreamId::parse(stream).deployment_id(),
    }
}

/// The notification an event makes, if it makes one. `deployment` is the
/// event's deployment (`deployment_of`) with its request, when it has one.
pub fn notice(event: &Event, event_id: Uuid, at: DateTime<Utc>, deployment: Option<Subject<'_>>) -> Option<Notice> {
    let of_deployment = |kind: NotificationKind, summary: String, details: serde_json::Value| {
        let Subject { id, context, .. } = deployment?;
        Some(Notice {
            kind,
            event_id,
            at,
            project: Some(context.project.clone()),
            environment: Some(context.environment.clone()),
            deployment: Some(id),
            summary: format!("{} {}: deployment {id} {summary}", context.project, context.environment),
            details,
        })
    };
    match event {
        Event::DeploymentRequested(r) => Some(Notice {
            kind: NotificationKind::DeploymentStarted,
            event_id,
            at,
            project: Some(r.project.clone()),
            environment: Some(r.environment.clone()),
            deployment: Some(r.deployment_id),
            summary: format!("{} {}: deployment {} of {} started", r.project, r.environment, r.deployment_id, r.git_ref),
            details: json!({ "git_ref": r.git_ref, "dry_run": r.dry_run }),
        }),
        Event::DeploymentSucceeded(s) => of_deployment(
            NotificationKind::DeploymentSucceeded,
            format!("succeeded (commit {})", short(&s.commit)),
            json!({ "commit": s.commit, "image_id": s.image_id }),
        ),
        Event::DeploymentFailed(f) => {
            let step = deployment.is_some_and(|d| d.started).then_some(f.step);
            of_deployment(NotificationKind::DeploymentFailed, failure_text(step, &f.reason), json!({ "step": step, "reason": f.reason }))
        }
        Event::ReleaseRolledBack(r) => of_deployment(
            NotificationKind::DeploymentRolledBack,
            format!("rolled back: {}", r.reason),
            json!({ "to": r.to, "reason": r.reason }),
        ),
        Event::ApprovalRequired(a) => of_deployment(
            NotificationKind::DeploymentAwaitingApproval,
            format!("awaits {} approval(s)", a.approvals),
            json!({ "approvals": a.approvals }),
        ),
        Event::DeploymentApproved(a) => {
            of_deployment(NotificationKind::DeploymentApproved, format!("approved by {}", a.by), json!({ "by": a.by, "reason": a.reason }))
        }
        Event::DeploymentRejected(r) => {
            of_deployment(NotificationKind::DeploymentRejected, format!("rejected by {}", r.by), json!({ "by": r.by, "reason": r.reason }))
        }
        Event::FreezeOverridden(o) => of_deployment(
            NotificationKind::FreezeOverridden,
            format!("deployed inside the freeze \"{}\" by {}: {}", o.schedule, o.by, o.reason),
            json!({ "schedule": o.schedule, "until": o.until, "by": o.by, "reason": o.reason }),
        ),
        Event::ContainerSupervised(s) if s.state == LiveState::CrashLooping => of_deployment(
            NotificationKind::ReleaseCrashLooping,
            format!(
                "is crash-looping: {} restarts, last exit code {}",
                s.restarts,
                s.last_exit.map_or("unknown".into(), |c| c.to_string())
            ),
            json!({ "container": s.container, "restarts": s.restarts, "last_exit": s.last_exit, "oom": s.oom }),
        ),
        // The swarm runtime's word for it: Swarm restarts a failed replica
        // as a new task, so the loop is counted per service.
        Event::ReplicasObserved(r) if r.crash_loop_said && r.crash_loop > 0 => {
            let last_error = r.changes.iter().rev().find(|c| !c.error.is_empty()).map(|c| c.error.clone());
            of_deployment(
                NotificationKind::ReleaseCrashLooping,
                format!(
                    "is crash-looping: {} replica failures of {} within a minute, {} of {} replicas running{}",
                    r.crash_loop,
                    r.service,
                    r.running,
                    r.wanted,
                    last_error.as_ref().map_or(String::new(), |e| format!(", last: {e}"))
                ),
                json!({ "service": r.service, "failures": r.crash_loop, "running": r.running, "wanted": r.wanted, "last_error": last_error }),
            )
        }
        Event::CertificateRenewalFailed(c) => Some(Notice {
            kind: NotificationKind::CertificateRenewalFailed,
            event_id,
            at,
            project: None,
            environment: None,
            deployment: None,
            summary: format!("the certificate of {} could not be renewed: {}", c.domain, c.reason),
            details: json!({ "domain": c.domain, "reason": c.reason }),
        }),
        _ => None,
    }
}

/// The crash loop a record tells of, if it tells of one: the release, and
/// its container (single engine) or service (swarm).
fn crash_loop_told(event: &Event) -> Option<(Uuid, &str)> {
    match event {
        Event::ContainerSupervised(s) if s.state == LiveState::CrashLooping => Some((s.deployment_id, s.container.as_str())),
        Event::ReplicasObserved(r) if r.crash_loop_said && r.crash_loop > 0 => Some((r.deployment_id, r.service.as_str())),
        _ => None,
    }
}

/// True for a record that tells of a crash loop (see `told_recently`).
pub fn tells_a_crash_loop(event: &Event) -> bool {
    crash_loop_told(event).is_some()
}

/// How long after a record told of a crash loop another word of the same
/// loop is no news: half the watchers' repeat interval, so that one
/// watcher's own reminders (a minute apart) still go out.
pub fn crash_loop_told_within() -> chrono::Duration {
    crate::supervise::Limits::default().repeat_interval / 2
}

/// Whether an earlier record of the log (`earlier`: when it was recorded,
/// and what) told of the crash loop `event` tells of, less than `within`
/// from `at` either way: the log orders them, and the watchers' clocks
/// (on different hosts) may disagree by a moment.
/// Several watchers may look at one release — a swarm worker each, or the
/// host agents of several workers on one host — and each records what it
/// sees, at about the same moment: one notification of the loop is
/// enough, not one per watcher. Decided from the log alone, so every
/// notifier, and the same one sending again after a restart, decides the
/// same.
pub fn told_recently(event: &Event, at: DateTime<Utc>, earlier: &[(DateTime<Utc>, &Event)], within: chrono::Duration) -> bool {
    let Some(this) = crash_loop_told(event) else { return false };
    earlier.iter().any(|(then, e)| (at - *then).abs() < within && crash_loop_told(e) == Some(this))
}

/// Whether an event can make a notification at all, before its context is
/// looked for (most events cannot: no read for them).
pub fn may_notify(event: &Event) -> bool {
    matches!(
        event,
        Event::DeploymentRequested(_)
            | Event::DeploymentSucceeded(_)
            | Event::DeploymentFailed(_)
            | Event::ReleaseRolledBack(_)
            | Event::CertificateRenewalFailed(_)
            | Event::ApprovalRequired(_)
            | Event::DeploymentApproved(_)
            | Event::DeploymentRejected(_)
            | Event::FreezeOverridden(_)
    ) || matches!(event, Event::ContainerSupervised(s) if s.state == LiveState::CrashLooping)
        || matches!(event, Event::ReplicasObserved(r) if r.crash_loop_said && r.crash_loop > 0)
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// A subscription as folded from the notifications stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub subscribed: NotificationSubscribed,
    /// Where it was recorded: it is told of events after it only.
    pub since: LogPosition,
}

impl Subscription {
    /// Whether this subscription wants `notice`: its project (or every
    /// project) and one of its kinds (or every kind). A subscription to one
    /// project hears nothing of the installation's own events.
    pub fn wants(&self, notice: &Notice) -> bool {
        let project = match &self.subscribed.project {
            None => true,
            Some(p) => notice.project.as_ref() == Some(p),
        };
        project && (self.subscribed.kinds.is_empty() || self.subscribed.kinds.contains(&notice.kind))
    }
}

/// Every live subscription, folded from the notifications stream.
pub type Subscriptions = BTreeMap<Uuid, Subscription>;

/// Applies one event of the notifications stream recorded at `position`.
pub fn apply_subscription(subscriptions: &mut Subscriptions, event: &Event, position: LogPosition) {
    match event {
        Event::NotificationSubscribed(s) => {
            subscriptions.entry(s.id).or_insert_with(|| Subscription { subscribed: s.clone(), since: position });
        }
        Event::NotificationUnsubscribed(u) => {
            subscriptions.remove(&u.id);
        }
        _ => {}
    }
}

/// How far a subscription's deliveries got, folded from its own stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Progress {
    /// The last event delivered (or given up on) in log order; later
    /// matching events are still to send. `None`: from the subscription on.
    pub cursor: Option<LogPosition>,
    /// The event being retried: its attempts so far, the first one's time,
    /// and when the next is due.
    pub retrying: Option<Retrying>,
    /// Redeliveries asked for and not attempted yet, in order.
    pub redeliveries: Vec<NotifiedEvent>,
    /// The stream's version this was folded to.
    pub version: u64,
    /// Who may send for the subscription, and until when (the last
    /// `NotificationLeaseTaken`).
    pub lease: Option<Lease>,
}

/// A notifier's right to send a subscription's notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    pub until: DateTime<Utc>,
}

/// Whether a notifier may post for a subscription now (`Progress::lease_need`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseNeed {
    /// It holds the lease for longer than one post can take.
    Held,
    /// Nobody holds it, its holder's ran out, or the asker's own ends before
    /// a post could: take it (or renew it) until then.
    Take { until: DateTime<Utc> },
    /// Another notifier holds it until then: wait, and post nothing.
    HeldBy(Lease),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retrying {
    pub event_id: Uuid,
    pub attempts: u32,
    pub first_at: DateTime<Utc>,
    pub next_at: DateTime<Utc>,
}

impl Progress {
    /// Applies one event of the subscription's stream (at `version`).
    pub fn apply(&mut self, event: &Event, version: u64) {
        self.version = version;
        match event {
            Event::NotificationAttempted(a) if a.redelivery => {
                if let Some(i) = self.redeliveries.iter().position(|r| r.event_id == a.event.event_id) {
                    self.redeliveries.remove(i);
                }
            }
            Event::NotificationAttempted(a) => match &a.outcome {
                DeliveryOutcome::Delivered | DeliveryOutcome::GaveUp => {
                    self.cursor = Some(a.event.position);
                    self.retrying = None;
                }
                DeliveryOutcome::Retry { next_at } => {
                    let first_at = match &self.retrying {
                        Some(r) if r.event_id == a.event.event_id => r.first_at,
                        _ => a.at,
                    };
                    self.retrying = Some(Retrying { event_id: a.event.event_id, attempts: a.attempt, first_at, next_at: *next_at });
                }
            },
            Event::NotificationRedeliveryRequested(r) => self.redeliveries.push(r.event.clone()),
            Event::NotificationReplayRequested(r) => {
                self.cursor = Some(r.from);
                self.retrying = None;
            }
            Event::NotificationLeaseTaken(l) => self.lease = Some(Lease { holder: l.holder.clone(), until: l.until }),
            _ => {}
        }
    }

    /// Whether notifier `me` may post now: only the lease's holder posts,
    /// and only while a post started now (taking at most `post_timeout`)
    /// ends inside the lease, so two engines never post the same
    /// notification at once. A lease is taken for `lease` at a time; one
    /// whose holder stopped runs out and the next notifier takes it.
    pub fn lease_need(&self, me: &str, now: DateTime<Utc>, lease: Duration, post_timeout: Duration) -> LeaseNeed {
        let margin = chrono::Duration::from_std(post_timeout).unwrap_or(chrono::Duration::days(1));
        let take = || LeaseNeed::Take { until: now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::days(1)) };
        match &self.lease {
            Some(l) if l.holder == me && l.until - now > margin => LeaseNeed::Held,
            Some(l) if l.holder != me && l.until > now => LeaseNeed::HeldBy(l.clone()),
            _ => take(),
        }
    }
}

/// When a failed delivery is tried again: after `base`, doubling each time
/// up to `cap`, until `give_up_after` has passed since the first attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub give_up_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base: Duration::from_secs(10), cap: Duration::from_secs(3600), give_up_after: Duration::from_secs(72 * 3600) }
    }
}

/// What follows a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    RetryAt(DateTime<Utc>),
    GiveUp,
}

impl Backoff {
    /// After the `attempts`-th failed attempt (1 for the first) at `now`,
    /// of a delivery first attempted at `first_at`.
    pub fn next(&self, attempts: u32, first_at: DateTime<Utc>, now: DateTime<Utc>) -> Next {
        let doublings = attempts.saturating_sub(1).min(31);
        let delay = self.base.saturating_mul(1u32 << doublings).min(self.cap);
        let at = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        let limit = first_at + chrono::Duration::from_std(self.give_up_after).unwrap_or(chrono::Duration::MAX);
        if at > limit {
            Next::GiveUp
        } else {
            Next::RetryAt(at)
        }
    }
}

/// The body a target takes for `notice` (`position`: where its event is in the log).
pub fn body(target: NotificationTarget, notice: &Notice, position: LogPosition) -> Vec<u8> {
    let value = match target {
        NotificationTarget::Webhook => json!({
            "id": notice.event_id,
            "kind": notice.kind.as_str(),
            "at": notice.at,
            "position": position.to_string(),
            "project": notice.project,
            "environment": notice.environment,
            "deployment": notice.deployment,
            "summary": notice.summary,
            "details": notice.details,
        }),
        NotificationTarget::Slack => json!({ "text": format!("[{}] {}", notice.kind, notice.summary) }),
        NotificationTarget::Discord => {
            let mut content = format!("[{}] {}", notice.kind, notice.summary);
            if content.chars().count() > DISCORD_MAX {
                content = content.chars().take(DISCORD_MAX - 1).chain(['…']).collect();
            }
            json!({ "content": content, "allowed_mentions": { "parse": [] } })
        }
    };
    serde_json::to_vec(&value).unwrap_or_default()
}

/// `v1=` and the hex HMAC-SHA256, under `secret`, of `<timestamp>.<body>`:
/// what `X-Slipway-Signature` carries. The timestamp is signed too, so a
/// receiver that refuses old timestamps refuses a replayed request.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| {
        // HMAC accepts keys of any length; this cannot happen.
        <Hmac<Sha256> as Mac>::new_from_slice(b"slipway").expect("a fixed key is valid")
    });
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Whether `header` is the signature of `body` at `timestamp` under
/// `secret` (constant time): what a receiver checks.
pub fn verify(secret: &str, timestamp: i64, body: &[u8], header: &str) -> bool {
    use subtle::ConstantTimeEq;
    signature(secret, timestamp, body).as_bytes().ct_eq(header.as_bytes()).into()
}

/// A target URL checked: `http://` or `https://` with a host. Returns what
/// may be shown of it (scheme, host and port: a Slack or Discord webhook's
/// path is its credential). The error never repeats the URL.
pub fn check_url(url: &str) -> Result<String, String> {
    let (scheme, rest) = url.split_once("://").ok_or("the URL must start with https:// (or http://)")?;
    if scheme != "https" && scheme != "http" {
        return Err(format!("the URL's scheme `{scheme}` is not https or http"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err("the URL may not hold a user name or password; give a secret with --secret-file instead".into());
    }
    if authority.is_empty() || authority.starts_with(':') {
        return Err("the URL has no host".into());
    }
    if url.chars().any(char::is_whitespace) {
        return Err("the URL holds white space".into());
    }
    Ok(format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_proto::event::{
        CertificateRenewalFailed, ContainerSupervised, DeploymentFailed, DeploymentSucceeded, NotificationAttempted, NotifiedEvent,
    };
    use slipway_proto::Step;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap_or_default()
    }

    fn context() -> DeploymentContext {
        DeploymentContext { project: "shop".into(), environment: "live".into(), git_ref: "main".into() }
    }

    fn about(id: Uuid, context: &DeploymentContext) -> Subject<'_> {
        Subject { id, context, started: true }
    }

    fn subscription(project: Option<&str>, kinds: &[NotificationKind]) -> Subscription {
        Subscription {
            subscribed: NotificationSubscribed {
                id: Uuid::nil(),
                project: project.map(Into::into),
                kinds: kinds.to_vec(),
                target: NotificationTarget::Webhook,
                url_shown: "https://example.com".into(),
                url: "hmac-sha256:00".into(),
                secret: None,
            },
            since: LogPosition::default(),
        }
    }

    #[test]
    fn deployment_outcomes_notify_with_their_project_and_other_events_do_not() {
        let d = Uuid::now_v7();
        let failed = Event::DeploymentFailed(DeploymentFailed { step: Step::Build, reason: "no Dockerfile".into() });
        let n = notice(&failed, Uuid::nil(), at(0), Some(about(d, &context()))).unwrap();
        assert_eq!(n.kind, NotificationKind::DeploymentFailed);
        assert_eq!((n.project.as_deref(), n.environment.as_deref(), n.deployment), (Some("shop"), Some("live"), Some(d)));
        assert!(n.summary.starts_with("shop live: deployment") && n.summary.ends_with("failed at build: no Dockerfile"), "{}", n.summary);
        let ok = Event::DeploymentSucceeded(DeploymentSucceeded { image_id: "sha256:1".into(), commit: "0123456789abcdef".into() });
        let n = notice(&ok, Uuid::nil(), at(0), Some(about(d, &context()))).unwrap();
        assert!(n.summary.contains("commit 0123456789ab)"), "{}", n.summary);
        // Without the deployment's request there is nothing to say whose it was.
        assert_eq!(notice(&ok, Uuid::nil(), at(0), None), None);
        let approved =
            Event::DeploymentApproved(slipway_proto::event::DeploymentApproved { by: "token:bob".into(), reason: String::new() });
        let n = notice(&approved, Uuid::nil(), at(0), Some(about(d, &context()))).unwrap();
        assert_eq!((n.kind, n.summary.ends_with("approved by token:bob")), (NotificationKind::DeploymentApproved, true));
        // Rejected before its first step: it did not fail at one.
        let rejected = Event::DeploymentFailed(DeploymentFailed { step: Step::CheckServices, reason: "rejected by ann".into() });
        let n = notice(&rejected, Uuid::nil(), at(0), Some(Subject { started: false, ..about(d, &context()) })).unwrap();
        assert!(n.summary.ends_with("failed before it started: rejected by ann"), "{}", n.summary);
        assert_eq!(n.details["step"], serde_json::Value::Null);
        let cancel = Event::CancelRequested(slipway_proto::event::CancelRequested { reason: String::new() });
        assert_eq!(notice(&cancel, Uuid::nil(), at(0), Some(about(d, &context()))), None);
    }

    #[test]
    fn a_crash_loop_notifies_and_other_supervision_does_not() {
        let record = |state| {
            Event::ContainerSupervised(ContainerSupervised {
                deployment_id: Uuid::nil(),
                container: "c".into(),
                state,
                exits: 3,
                restarts: 7,
                last_exit: Some(3),
                oom: false,
                host: "h".into(),
            })
        };
        let n = notice(&record(LiveState::CrashLooping), Uuid::nil(), at(0), Some(about(Uuid::nil(), &context()))).unwrap();
        assert_eq!(n.kind, NotificationKind::ReleaseCrashLooping);
        assert!(n.summary.contains("7 restarts, last exit code 3"), "{}", n.summary);
        assert_eq!(notice(&record(LiveState::Running), Uuid::nil(), at(0), Some(about(Uuid::nil(), &context()))), None);
        assert_eq!(deployment_of("environment-shop-live", &record(LiveState::Running)), Some(Uuid::nil()));
    }

    #[test]
    fn a_swarm_crash_loop_notifies_and_other_replica_records_do_not() {
        use slipway_proto::event::{ReplicaChange, ReplicaChanged, ReplicasObserved};
        let d = Uuid::from_u128(9);
        let record = |crash_loop, crash_loop_said| {
            Event::ReplicasObserved(ReplicasObserved {
                deployment_id: d,
                service: "slipway-shop-live-web".into(),
                changes: vec![ReplicaChanged {
                    slot: 1,
                    change: ReplicaChange::Failed,
                    node: "10.0.0.2".into(),
                    from: String::new(),
                    error: "task: non-zero exit (3)".into(),
                }],
                running: 2,
                wanted: 3,
                role: "web".into(),
                crash_loop,
                crash_loop_said,
                ..Default::default()
            })
        };
        assert_eq!(deployment_of("environment-shop-live", &record(0, false)), Some(d));
        assert!(may_notify(&record(4, true)) && !may_notify(&record(0, false)) && !may_notify(&record(5, false)));
        let n = notice(&record(4, true), Uuid::nil(), at(0), Some(about(d, &context()))).unwrap();
        assert_eq!(n.kind, NotificationKind::ReleaseCrashLooping);
        assert!(
            n.summary.ends_with("is crash-looping: 4 replica failures of slipway-shop-live-web within a minute, 2 of 3 replicas running, last: task: non-zero exit (3)"),
            "{}",
            n.summary
        );
        assert_eq!((n.details["failures"].as_u64(), n.deployment), (Some(4), Some(d)));
        assert_eq!(notice(&record(0, false), Uuid::nil(), at(0), Some(about(d, &context()))), None);
        assert_eq!(notice(&record(5, false), Uuid::nil(), at(0), Some(about(d, &context()))), None, "carried, not told");

        // Two watchers tell of the same loop: the second word is not news.
        let within = crash_loop_told_within();
        assert_eq!(within, chrono::Duration::seconds(30));
        let told = record(3, true);
        assert!(tells_a_crash_loop(&told) && !tells_a_crash_loop(&record(5, false)));
        assert!(told_recently(&told, at(2), &[(at(0), &told)], within));
        // The other watcher's clock a second ahead: still the same moment.
        assert!(told_recently(&told, at(2), &[(at(3), &told)], within));
        // A watcher's reminder a minute later, a record that told nothing,
        // or another service's loop: it is news.
        assert!(!told_recently(&told, at(60), &[(at(0), &told)], within));
        let carried = record(5, false);
        assert!(!told_recently(&told, at(2), &[(at(0), &carried)], within));
        let Event::ReplicasObserved(other) = record(3, true) else { unreachable!() };
        let other = Event::ReplicasObserved(ReplicasObserved { service: "slipway-shop-live-worker".into(), ..other });
        assert!(!told_recently(&told, at(2), &[(at(0), &other)], within));
        // Nor does it hold back a record that tells nothing.
        assert!(!told_recently(&carried, at(2), &[(at(0), &told)], within));
    }

    #[test]
    fn subscriptions_filter_by_project_and_kind() {
        let d = Uuid::now_v7();
        let failed = Event::DeploymentFailed(DeploymentFailed { step: Step::Build, reason: "x".into() });
        let failed = notice(&failed, Uuid::nil(), at(0), Some(about(d, &context()))).unwrap();
        let cert = Event::CertificateRenewalFailed(CertificateRenewalFailed { domain: "a.com".into(), reason: "x".into(), at: at(0) });
        let cert = notice(&cert, Uuid::nil(), at(0), None).unwrap();
        assert!(subscription(None, &[]).wants(&failed));
        assert!(subscription(None, &[]).wants(&cert));
        assert!(subscription(Some("shop"), &[NotificationKind::DeploymentFailed]).wants(&failed));
        assert!(!subscription(Some("shop"), &[NotificationKind::DeploymentSucceeded]).wants(&failed));
        assert!(!subscription(Some("blog"), &[]).wants(&failed));
        assert!(!subscription(Some("shop"), &[]).wants(&cert), "a project's subscription hears nothing of certificates");
    }

    #[test]
    fn retries_double_up_to_the_cap_and_give_up_after_the_period() {
        let backoff = Backoff { base: Duration::from_secs(10), cap: Duration::from_secs(60), give_up_after: Duration::from_secs(300) };
        assert_eq!(backoff.next(1, at(0), at(0)), Next::RetryAt(at(10)));
        assert_eq!(backoff.next(2, at(0), at(10)), Next::RetryAt(at(30)));
        assert_eq!(backoff.next(3, at(0), at(30)), Next::RetryAt(at(70)));
        assert_eq!(backoff.next(4, at(0), at(70)), Next::RetryAt(at(130)), "capped at a minute");
        assert_eq!(backoff.next(60, at(0), at(240)), Next::RetryAt(at(300)), "no overflow on many attempts");
        assert_eq!(backoff.next(61, at(0), at(241)), Next::GiveUp);
        let default = Backoff::default();
        assert_eq!(default.next(1, at(0), at(72 * 3600 - 10)), Next::RetryAt(at(72 * 3600)));
        assert_eq!(default.next(1, at(0), at(72 * 3600 - 9)), Next::GiveUp, "72 hours and no more");
    }

    #[test]
    fn a_signature_covers_the_timestamp_and_the_body() {
        let s = signature("slwn_secret", 1_800_000_000, b"{}");
        assert!(s.starts_with("v1=") && s.len() == 3 + 64);
        assert!(verify("slwn_secret", 1_800_000_000, b"{}", &s));
        assert!(!verify("slwn_other", 1_800_000_000, b"{}", &s));
        assert!(!verify("slwn_secret", 1_800_000_001, b"{}", &s));
        assert!(!verify("slwn_secret", 1_800_000_000, b"{ }", &s));
    }

    #[test]
    fn each_target_gets_its_shape() {
        let cert = Event::CertificateRenewalFailed(CertificateRenewalFailed { domain: "a.com".into(), reason: "x".into(), at: at(0) });
        let n = notice(&cert, Uuid::nil(), at(0), None).unwrap();
        let json = |t| serde_json::from_slice::<serde_json::Value>(&body(t, &n, LogPosition { tx: 1, seq: 2 })).unwrap();
        let hook = json(NotificationTarget::Webhook);
        assert_eq!((hook["kind"].as_str(), hook["position"].as_str()), (Some("certificate.renewal_failed"), Some("1:2")));
        assert!(json(NotificationTarget::Slack)["text"].as_str().unwrap().starts_with("[certificate.renewal_failed] the certificate"));
        let mut long = n.clone();
        long.summary = "x".repeat(5000);
        let discord: serde_json::Value = serde_json::from_slice(&body(NotificationTarget::Discord, &long, LogPosition::default())).unwrap();
        assert_eq!(discord["content"].as_str().unwrap().chars().count(), DISCORD_MAX);
    }

    #[test]
    fn urls_show_only_their_host_and_bad_ones_are_refused_without_being_repeated() {
        assert_eq!(check_url("https://hooks.slack.com/services/T0/B0/XYZ").unwrap(), "https://hooks.slack.com");
        assert_eq!(check_url("http://127.0.0.1:9000/hook?x=1").unwrap(), "http://127.0.0.1:9000");
        for bad in ["hooks.slack.com/x", "ftp://a/b", "https://user:pw@a/b", "https:///x", "https://a/b c"] {
            let err = check_url(bad).unwrap_err();
            assert!(!err.contains(bad), "{err}");
        }
    }

    #[test]
    fn only_the_lease_holder_posts_and_a_lease_whose_holder_stopped_runs_out() {
        let (lease, post) = (Duration::from_secs(30), Duration::from_secs(10));
        let mut progress = Progress::default();
        // Nobody holds it: take it for the lease's length.
        assert_eq!(progress.lease_need("a", at(0), lease, post), LeaseNeed::Take { until: at(30) });
        let taken = |holder: &str, until| {
            Event::NotificationLeaseTaken(slipway_proto::event::NotificationLeaseTaken { holder: holder.into(), until })
        };
        progress.apply(&taken("a", at(30)), 1);
        assert_eq!(progress.version, 1);
        // Its holder posts while a post fits inside it; the other waits.
        assert_eq!(progress.lease_need("a", at(5), lease, post), LeaseNeed::Held);
        assert_eq!(progress.lease_need("b", at(5), lease, post), LeaseNeed::HeldBy(Lease { holder: "a".into(), until: at(30) }));
        // A post started 25 s in could outlast it: the holder renews first.
        assert_eq!(progress.lease_need("a", at(25), lease, post), LeaseNeed::Take { until: at(55) });
        // `a` stopped: once its lease ran out, `b` takes it.
        assert_eq!(progress.lease_need("b", at(29), lease, post), LeaseNeed::HeldBy(Lease { holder: "a".into(), until: at(30) }));
        assert_eq!(progress.lease_need("b", at(30), lease, post), LeaseNeed::Take { until: at(60) });
        progress.apply(&taken("b", at(60)), 2);
        assert_eq!(progress.lease_need("a", at(31), lease, post), LeaseNeed::HeldBy(Lease { holder: "b".into(), until: at(60) }));
    }

    #[test]
    fn progress_follows_attempts_redeliveries_and_replays() {
        let event = |seq, id| NotifiedEvent {
            event_id: id,
            stream: "s".into(),
            version: 1,
            position: LogPosition { tx: 0, seq },
            kind: NotificationKind::DeploymentFailed,
        };
        let attempt = |e: &NotifiedEvent, n, outcome, redelivery, t| {
            Event::NotificationAttempted(NotificationAttempted {
                event: e.clone(),
                attempt: n,
                status: Some(500),
                error: None,
                latency_ms: 1,
                outcome,
                redelivery,
                at: at(t),
            })
        };
        let (a, b) = (event(5, Uuid::now_v7()), event(9, Uuid::now_v7()));
        let mut progress = Progress::default();
        progress.apply(&attempt(&a, 1, DeliveryOutcome::Retry { next_at: at(10) }, false, 0), 1);
        progress.apply(&attempt(&a, 2, DeliveryOutcome::Retry { next_at: at(30) }, false, 10), 2);
        let retrying = progress.retrying.clone().unwrap();
        assert_eq!((retrying.attempts, retrying.first_at, retrying.next_at, progress.cursor), (2, at(0), at(30), None));
        progress.apply(&attempt(&a, 3, DeliveryOutcome::Delivered, false, 30), 3);
        assert_eq!((progress.cursor, &progress.retrying), (Some(a.position), &None));
        progress
            .apply(&Event::NotificationRedeliveryRequested(slipway_proto::event::NotificationRedeliveryRequested { event: a.clone() }), 4);
        progress.apply(&attempt(&b, 1, DeliveryOutcome::GaveUp, false, 40), 5);
        assert_eq!((progress.cursor, progress.redeliveries.len()), (Some(b.position), 1));
        progress.apply(&attempt(&a, 1, DeliveryOutcome::Delivered, true, 50), 6);
        assert_eq!((progress.cursor, progress.redeliveries.len()), (Some(b.position), 0), "a redelivery moves no cursor");
        let replay = slipway_proto::event::NotificationReplayRequested { from: LogPosition { tx: 0, seq: 1 } };
        progress.apply(&Event::NotificationReplayRequested(replay), 7);
        assert_eq!((progress.cursor, progress.version), (Some(LogPosition { tx: 0, seq: 1 }), 7));
    }
}
