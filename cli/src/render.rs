//! How events look on a terminal: one line each, naming the step and the
//! outcome, for `slipway demo` and the history views; and as JSON for `--json`.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use slipway_proto::envelope::Message;
use slipway_proto::Event;
use slipway_store::RecordedEvent;

fn reason(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}

/// A short human description of an event's payload.
pub fn describe(event: &Event) -> String {
    match event {
        Event::ProjectCreated(p) => format!("project {} from {}", p.name, p.repository),
        Event::SettingsChanged(s) => format!("{}: {} set, {} removed", s.environment, s.set.len(), s.removed.len()),
        Event::DeploymentRequested(r) => {
            let kind = match (&r.rollback_of, &r.replay_of, &r.promoted_from) {
                (Some(of), _, _) => format!("; a rollback to {}", of.deployment_id),
                (_, Some(replay), _) => format!("; a replay of {} from {}", replay.deployment_id, replay.from_step),
                (_, _, Some(from)) => format!("; a promotion of {}", from.deployment_id),
                _ => String::new(),
            };
            format!("{} {} at `{}` ({:?}{}{kind})", r.project, r.environment, r.git_ref, r.mode, if r.dry_run { ", dry run" } else { "" })
        }
        Event::StepDispatched(d) => format!("{} (attempt {})", d.step, d.attempt),
        Event::ServicesChecked(s) => format!("{} service(s) reachable", s.services.len()),
        Event::CheckedOut(c) => format!("commit {}", c.commit),
        Event::ImageBuilt(b) => {
            let mut text = format!(
                "image {} in {} ms ({:?} mode, cache {})",
                b.image_id,
                b.duration_ms,
                b.mode,
                if b.cache_used { "on" } else { "off" }
            );
            for base in &b.base_images {
                text.push_str(&format!("\n      from {base}"));
            }
            for w in &b.warnings {
                text.push_str(&format!("\n      warning: {}:{}: {} [{}]", w.file, w.line, w.message, w.rule));
            }
            text
        }
        Event::ImageReused(r) => format!("image {} from deployment {}", r.image_id, r.source_deployment),
        Event::WebContainerStarted(w) => {
            let mut text = format!("{} on 127.0.0.1:{}", w.container, w.host_port);
            for warning in &w.warnings {
                text.push_str(&format!("\n      warning: {warning}"));
            }
            text
        }
        Event::ReleaseCommandsRan(r) if r.skipped => "release commands not run".into(),
        Event::ReleaseCommandsRan(r) => format!("{} release command(s) ran", r.results.len()),
        Event::ProcessesStarted(p) => format!("{} process container(s)", p.containers.len()),
        Event::HealthCheckPassed(h) => format!("GET {} -> {} after {} attempt(s)", h.path, h.status, h.attempts),
        Event::StepFailed(f) => format!("{} failed: {}", f.step, f.reason),
        Event::StepSkipped(s) => format!("{}: {}", s.step, s.reason),
        Event::DeploymentSucceeded(s) => format!("commit {} image {}", or_dash(&s.commit), or_dash(&s.image_id)),
        Event::DeploymentFailed(f) => format!("at {}: {}", f.step, f.reason),
        Event::ContainersRemoved(r) => format!("{} container(s) removed", r.containers.len()),
        Event::TokenIssued(t) => format!("token {} ({}) issued by {}", t.name, t.scope, t.issued_by),
        Event::TokenRevoked(t) => format!("token {} revoked", t.name),
        Event::DeploymentEnqueued(q) => format!("deployment {} queued", q.deployment_id),
        Event::DeploymentFinished(f) => format!("deployment {} {}", f.deployment_id, if f.succeeded { "succeeded" } else { "failed" }),
        Event::RouteChanged(r) => format!(
            "{} {} -> {} ({:?}{})",
            r.project,
            r.environment,
            if r.upstreams.is_empty() { "nothing".to_string() } else { r.upstreams.join(", ") },
            r.reason,
            r.deployment_id.map(|d| format!(", deployment {d}")).unwrap_or_default()
        ),
        Event::RouterStarted(r) => format!("router {} on {} for *.{}", r.router_id, r.listen, r.domain),
        Event::RouterStopped(r) => format!("router {} stopped", r.router_id),
        Event::RouterExpired(r) => format!(
            "router {} expired: silent since {} (lease {} ms); switches no longer wait for it",
            r.router_id,
            r.last_seen.format("%H:%M:%S%.3f UTC"),
            r.lease_ms
        ),
        Event::RouteAcknowledged(a) => format!("router {} at route version {}", a.router_id, a.route_version),
        Event::TrafficSwitchRequested(t) => format!(
            "route version {} to {}; waiting for {}",
            t.route_version,
            t.upstreams.join(", "),
            if t.routers.is_empty() { "no router".to_string() } else { t.routers.join(", ") }
        ),
        Event::MirrorAdded(m) => format!("mirrored by project {}", m.mirror),
        Event::SourceAccessChanged(c) => {
            let mut parts: Vec<String> = c.set.keys().map(|k| format!("{k} set")).collect();
            parts.extend(c.removed.iter().map(|k| format!("{k} removed")));
            if let Some(known) = &c.known_hosts {
                parts.push(format!("{} trusted host key(s)", known.len()));
            }
            if let Some(on) = c.submodules {
                parts.push(format!("submodules {}", if on { "on" } else { "off" }));
            }
            format!("source access: {}", parts.join(", "))
        }
        Event::NameClaimed(c) => format!("name `{}-{}` claimed", c.project, c.environment),
        Event::SourceHostKeyPinned(p) => format!("trusted on first use by {}: {}", p.deployment_id, p.known_host),
        Event::WebhookSecretRotated(r) => format!("webhook secret rotated ({})", r.fingerprint),
        Event::AutoDeploySet(r) => format!("auto-deploy {} -> {}", r.branch, r.environment),
        Event::AutoDeployRemoved(r) => format!("auto-deploy {} removed", r.branch),
        Event::EnvironmentAdded(a) => {
            let from = a.inherits.as_deref().map(|p| format!(", inheriting {p}")).unwrap_or_default();
            let origin = match &a.preview {
                Some(o) => match o.number {
                    Some(n) => format!(" (preview of pull request #{n}{})", if o.head_repo_fork { " from a fork" } else { "" }),
                    None => format!(" (preview of branch {})", o.branch),
                },
                None => String::new(),
            };
            format!("environment {} added{origin}{from}", a.name)
        }
        Event::EnvironmentRemoved(r) => format!(
            "environment {} removed: {} ({} deployments cancelled{}{})",
            r.name,
            r.reason,
            r.cancelled.len(),
            r.retired.map(|d| format!(", release {d} retired")).unwrap_or_default(),
            if r.route_removed { ", route removed" } else { "" }
        ),
        Event::RouteRemoved(r) => format!("route of {} {} removed", r.project, r.environment),
        Event::ProjectRemoved(r) => format!("project {} removed: {}", r.name, r.reason),
        Event::ReleaseRerouted(r) => format!(
            "route of the serving release moved to {} at route version {}; waiting for {} until {}",
            r.upstreams.join(", "),
            r.route_version,
            if r.routers.is_empty() { "no router".to_string() } else { r.routers.join(", ") },
            r.deadline.format("%H:%M:%S UTC")
        ),
        Event::RerouteSettled(r) if r.missing.is_empty() => {
            format!(
                "route version {} acknowledged by {}",
                r.route_version,
                if r.acknowledged.is_empty() { "no router (none registered)".to_string() } else { r.acknowledged.join(", ") }
            )
        }
        Event::RerouteSettled(r) => {
            format!("route version {}: {} did not acknowledge by the deadline", r.route_version, r.missing.join(", "))
        }
        Event::SecretsKeyRotated(r) => {
            format!("{} setting value(s) sealed again with key {} (were: {})", r.values, r.to, r.from.join(", "))
        }
        Event::DomainAdded(d) => format!("{} {} is served under {} too", d.project, d.environment, d.domain),
        Event::DomainRemoved(d) => format!("{} {} is served under {} no more", d.project, d.environment, d.domain),
        Event::CertificateStored(c) => {
            format!("certificate for {} stored ({:?}, valid until {}, {})", c.domain, c.source, c.not_after.to_rfc3339(), c.fingerprint)
        }
        Event::CertificateRenewalFailed(f) => format!("certificate for {} could not be obtained: {}", f.domain, f.reason),
        Event::AcmeChallengeReady(c) => format!("ACME {} challenge for {} answered by the routers", c.method, c.domain),
        Event::AcmeChallengeFinished(c) => format!("ACME challenge for {} finished", c.domain),
        Event::CertificateRemoved(c) => format!("certificate for {} removed ({})", c.domain, c.fingerprint),
        Event::HttpsRedirectSet(r) => {
            format!("plain HTTP for {} {} redirected to HTTPS", r.domain, if r.redirect { "is" } else { "is not" })
        }
        Event::AcmeAccountRegistered(a) => format!("ACME account {} registered at {}", a.account, a.directory),
        Event::NotificationSubscribed(n) => format!(
            "notifications subscription {}: {} to {} ({})",
            n.id,
            n.target,
            n.url_shown,
            n.project.as_deref().unwrap_or("every project")
        ),
        Event::NotificationUnsubscribed(n) => format!("notifications subscription {} removed", n.id),
        Event::NotificationAttempted(a) => format!(
            "{} notification attempt {}: {}{}",
            a.event.kind,
            a.attempt,
            match &a.outcome {
                slipway_proto::event::DeliveryOutcome::Delivered => "delivered".to_string(),
                slipway_proto::event::DeliveryOutcome::Retry { next_at } => format!("retry at {next_at}"),
                slipway_proto::event::DeliveryOutcome::GaveUp => "gave up".to_string(),
            },
            a.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
        ),
        Event::NotificationRedeliveryRequested(r) => {
            format!("redelivery of the {} notification of {} asked", r.event.kind, r.event.event_id)
        }
        Event::EnvironmentProtected(p) if p.approvals == 0 => format!("{}: deployments need no approval", p.environment),
        Event::EnvironmentProtected(p) => format!("{}: deployments wait for {} approval(s)", p.environment, p.approvals),
        Event::ApprovalRequired(a) => format!("awaiting approval ({} needed)", a.approvals),
        Event::DeploymentApproved(a) => format!("approved by {}{}", a.by, reason(&a.reason)),
        Event::DeploymentRejected(r) => format!("rejected by {}{}", r.by, reason(&r.reason)),
        Event::FreezeWindowSet(f) => {
            format!(
                "{}: frozen from each \"{}\" for {}",
                f.environment,
                f.schedule,
                slipway_engine::protection::duration_text(f.duration_seconds)
            )
        }
        Event::FreezeWindowRemoved(f) => format!("{}: freeze window \"{}\" removed", f.environment, f.schedule),
        Event::FreezeOverridden(o) => format!("freeze \"{}\" (until {}) overridden by {}: {}", o.schedule, o.until, o.by, o.reason),
        Event::NotificationReplayRequested(r) => format!("notifications replay from {} asked", r.from),
        Event::NotificationLeaseTaken(l) => format!("{} sends this subscription's notifications until {}", l.holder, l.until),
        Event::PreviewRuleSet(r) => format!(
            "preview rule: {} -> previews inheriting {}, removed after {} without a push",
            r.trigger,
            r.inherit,
            slipway_engine::preview::describe_seconds(r.ttl_seconds)
        ),
        Event::PreviewRuleRemoved(r) => format!("preview rule for {} removed", r.trigger),
        Event::PullRequestReceived(p) => format!(
            "{} pull request #{} {} ({}) by {}: {}: {}",
            p.provider, p.number, p.action, p.head_commit, p.sender, p.environment, p.outcome
        ),
        Event::PreviewApproved(a) => format!("{} of {} approved by {} ({})", a.commit, a.environment, a.approved_by, a.deployment),
        Event::PushReceived(p) => {
            let deployed: Vec<String> = p.deployments.iter().map(|d| format!("{} ({})", d.environment, d.deployment_id)).collect();
            let mut text = format!(
                "{} push {} of {} by {}: {}",
                p.provider,
                p.delivery,
                p.git_ref,
                p.pusher,
                if deployed.is_empty() {
                    "no rule matched".to_string()
                } else {
                    format!("deploying {} to {}", p.commit, deployed.join(", "))
                }
            );
            if !p.superseded.is_empty() {
                let old: Vec<String> = p.superseded.iter().map(ToString::to_string).collect();
                text.push_str(&format!("; superseded {}", old.join(", ")));
            }
            text
        }
        Event::PushSkipped(p) => {
            format!("{} push {} of {} at {} by {} skipped: {}", p.provider, p.delivery, p.git_ref, p.commit, p.pusher, p.reason)
        }
        Event::CancelRequested(c) => c.reason.clone(),
        Event::DeploymentReplayed(r) => format!("replayed as deployment {} from {}", r.replay, r.from_step),
        Event::TrafficSwitched(t) => format!("route version {} acknowledged by {} router(s)", t.route_version, t.routers.len()),
        Event::ReleaseWatchStarted(w) => format!("watching until {}", w.until.format("%H:%M:%S%.3f UTC")),
        Event::ReleaseWatched(w) => format!(
            "healthy for {} ms ({} probe(s), {} failed; {} container(s))",
            w.watched_ms,
            w.probes,
            w.failed_probes,
            w.containers.len()
        ),
        Event::ReleaseRolledBack(r) => format!(
            "{}; route version {} back to {}",
            r.reason,
            r.route_version,
            r.to.map_or("nothing (no earlier release)".to_string(), |d| format!("deployment {d}"))
        ),
        Event::RouterErrorsObserved(o) => format!(
            "router {} counted {} of {} request(s) failed ({} answered 5xx, {} upstream error(s)) on route version {} since {}",
            o.router_id,
            o.errors(),
            o.requests,
            o.errors_5xx,
            o.upstream_errors,
            o.route_version,
            o.since.format("%H:%M:%S%.3f UTC")
        ),
        Event::ContainerReconciled(r) => format!(
            "{} {}{}: {}",
            r.container,
            match r.action {
                slipway_proto::event::ContainerAction::Removed => "removed",
                slipway_proto::event::ContainerAction::Started => "started again",
                slipway_proto::event::ContainerAction::Redeployed => "gone, release deployed again",
            },
            on_host(&r.host),
            r.reason
        ),
        Event::ContainerSupervised(c) => format!(
            "{} {} ({} exit(s){}, {} restart(s){}){}",
            c.container,
            c.state.as_str(),
            c.exits,
            c.last_exit.map(|code| format!(", last code {code}")).unwrap_or_default(),
            c.restarts,
            if c.oom { ", OOM-killed" } else { "" },
            on_host(&c.host)
        ),
        Event::ReplicasObserved(r) => replicas_observed(r),
        Event::HostAvailabilityChanged(h) => {
            let moved = if h.moved.is_empty() { String::new() } else { format!("; moved {}", h.moved.join(", ")) };
            format!("swarm node {} ({}) set to {} (was {}){moved}", h.node, h.node_id, h.availability, h.previous)
        }
        Event::ReleaseUpstreamsObserved(r) => format!(
            "deployment {} answers at {} (was {}){}",
            r.deployment_id,
            r.upstreams.join(", "),
            if r.previous.is_empty() { "nothing".to_string() } else { r.previous.join(", ") },
            on_host(&r.host)
        ),
    }
}

/// `SERVICE: <changes>; R of W replica(s) running`, the replicas no node
/// can take said first, in one phrase, while there are any.
fn replicas_observed(r: &slipway_proto::event::ReplicasObserved) -> String {
    use slipway_proto::event::ReplicaChange;
    let mut parts = Vec::new();
    if r.unplaced > 0 {
        let role = if r.role.is_empty() { "" } else { " " };
        parts.push(format!("{} of {} {}{role}replicas cannot be placed: {}", r.unplaced, r.wanted, r.role, r.reason));
    }
    for c in r.changes.iter().filter(|c| r.unplaced == 0 || c.change != ReplicaChange::Unplaceable) {
        let mut text = format!("replica {} {}", c.slot, c.change.as_str());
        if !c.node.is_empty() {
            text.push_str(&format!(" on {}", c.node));
        }
        if !c.from.is_empty() {
            text.push_str(&format!(" (from {})", c.from));
        }
        if !c.error.is_empty() {
            text.push_str(&format!(": {}", c.error));
        }
        parts.push(text);
    }
    let more = if r.more > 0 { format!(" and {} more", r.more) } else { String::new() };
    let looping = if r.crash_loop > 0 { format!("; crash-looping: {} failures within a minute", r.crash_loop) } else { String::new() };
    // A record with no change: a crash loop ended, or a status put right.
    let changed = if parts.is_empty() { String::new() } else { format!("{}{more}; ", parts.join("; ")) };
    format!("{}: {changed}{} of {} replica(s) running{looping}", r.service, r.running, r.wanted)
}

fn on_host(host: &str) -> String {
    if host.is_empty() {
        String::new()
    } else {
        format!(" on {host}")
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// One line for a recorded event: version, type, actor, description.
pub fn line(recorded: &RecordedEvent) -> String {
    let (kind, text) = match recorded.envelope.decode::<Event>() {
        Ok(e) => (e.message_type().to_string(), describe(&e)),
        Err(err) => (recorded.envelope.message_type.clone(), format!("(undecodable: {err})")),
    };
    line_of(recorded.version, recorded.recorded_at, &kind, &recorded.envelope.actor, &text)
}

/// The line's layout, for events read from the store or from the API.
pub fn line_of(version: u64, at: DateTime<Utc>, kind: &str, actor: &str, text: &str) -> String {
    format!("{version:>3}  {}  {kind:<20} {actor:<8} {text}", at.format("%H:%M:%S%.3f"))
}

/// A recorded event as JSON, in the shape `GET /api/deployments/{id}/events`
/// gives, so a script reads the CLI's and the API's answers alike.
pub fn event_json(r: &RecordedEvent) -> Value {
    json!({
        "stream": r.envelope.stream,
        "version": r.version,
        "id": r.envelope.id,
        "type": r.envelope.message_type,
        "schema_version": r.envelope.schema_version,
        "actor": r.envelope.actor,
        "recorded_at": r.recorded_at,
        "hash": r.hash,
        "payload": r.envelope.payload_value(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_proto::event::{ReplicaChange, ReplicaChanged, ReplicasObserved};

    fn change(slot: u64, change: ReplicaChange, node: &str, error: &str) -> ReplicaChanged {
        ReplicaChanged { slot, change, node: node.into(), from: String::new(), error: error.into() }
    }

    #[test]
    fn replicas_no_node_can_take_and_placed_again_read_in_plain_words() {
        let reason = "no suitable node (scheduling constraints not satisfied on 3 nodes)";
        let stranded = ReplicasObserved {
            deployment_id: uuid::Uuid::from_u128(1),
            service: "slipway-shop-live-web".into(),
            changes: vec![change(2, ReplicaChange::Unplaceable, "", reason), change(3, ReplicaChange::Unplaceable, "", reason)],
            running: 1,
            wanted: 3,
            unplaced: 2,
            reason: reason.into(),
            role: "web".into(),
            ..Default::default()
        };
        assert_eq!(
            describe(&Event::ReplicasObserved(stranded.clone())),
            format!("slipway-shop-live-web: 2 of 3 web replicas cannot be placed: {reason}; 1 of 3 replica(s) running")
        );
        let placed = ReplicasObserved {
            changes: vec![change(2, ReplicaChange::Placed, "10.0.0.2", ""), change(3, ReplicaChange::Placed, "10.0.0.2", "")],
            running: 3,
            unplaced: 0,
            reason: String::new(),
            ..stranded.clone()
        };
        assert_eq!(
            describe(&Event::ReplicasObserved(placed)),
            "slipway-shop-live-web: replica 2 placed again on 10.0.0.2; replica 3 placed again on 10.0.0.2; 3 of 3 replica(s) running"
        );
        // Stranded and placed within one summary: each said.
        let both = ReplicasObserved {
            changes: vec![change(2, ReplicaChange::Unplaceable, "", reason), change(2, ReplicaChange::Placed, "10.0.0.3", "")],
            running: 3,
            unplaced: 0,
            reason: String::new(),
            ..stranded
        };
        assert_eq!(
            describe(&Event::ReplicasObserved(both)),
            format!("slipway-shop-live-web: replica 2 cannot be placed: {reason}; replica 2 placed again on 10.0.0.3; 3 of 3 replica(s) running")
        );
    }

    #[test]
    fn a_crash_loop_of_replicas_is_said() {
        let looping = ReplicasObserved {
            deployment_id: uuid::Uuid::from_u128(1),
            service: "slipway-shop-live-web".into(),
            changes: vec![change(1, ReplicaChange::Failed, "10.0.0.2", "task: non-zero exit (3)")],
            more: 2,
            running: 2,
            wanted: 3,
            role: "web".into(),
            crash_loop: 3,
            crash_loop_said: true,
            ..Default::default()
        };
        assert_eq!(
            describe(&Event::ReplicasObserved(looping.clone())),
            "slipway-shop-live-web: replica 1 failed on 10.0.0.2: task: non-zero exit (3) and 2 more; 2 of 3 replica(s) running; \
             crash-looping: 3 failures within a minute"
        );
        let ended = ReplicasObserved { changes: vec![], more: 0, running: 3, crash_loop: 0, crash_loop_said: false, ..looping };
        assert_eq!(describe(&Event::ReplicasObserved(ended)), "slipway-shop-live-web: 3 of 3 replica(s) running");
    }
}
