//! Protected environments, pure: may this actor approve this deployment
//! (`may_approve`: not its requester, not twice, only while it waits), is
//! a deployment requested now inside one of the environment's freeze
//! windows (`frozen`: cron schedules in UTC with a duration, read by
//! croner), and `gate`, what a new deployment request must carry (its
//! `ApprovalRequired`, its `FreezeOverridden`) or why it is refused.
//!
//! A refusal is a `Rejection`: `Forbidden` when the actor may not do it
//! (self-approval, a second approval by the same actor), `Conflict` when
//! the environment is inside a freeze window (naming it).
//!
//! The approval gate itself is the decider's: a deployment with approvals
//! missing dispatches nothing (`Deployment::awaiting_approval`). The
//! requests that record protections, freezes, approvals and rejections
//! are the engine's (`slipway_engine::protection`).

use std::str::FromStr;

use chrono::{DateTime, Utc};
use slipway_proto::event::{ApprovalRequired, FreezeOverridden};
use slipway_proto::Event;

use crate::deployment::Deployment;
use crate::project::Project;
use crate::rejection::Rejection;

/// Whether `approver` may approve `deployment`, requested by `requester`.
pub fn may_approve(deployment: &Deployment, requester: &str, approver: &str) -> Result<(), Rejection> {
    let id = deployment.id;
    if !deployment.awaiting_approval() {
        return Err(Rejection::Conflict(format!(
            "deployment {id} is not awaiting approval (it is {}); only a deployment to a protected environment waits for one",
            deployment.status_word()
        )));
    }
    if requester == approver {
        return Err(Rejection::Forbidden(format!(
            "{approver} requested deployment {id} and cannot approve it too: someone else with deploy scope must"
        )));
    }
    if deployment.approvals.iter().any(|a| a == approver) {
        return Err(Rejection::Forbidden(format!("{approver} approved deployment {id} already: another approver is needed")));
    }
    Ok(())
}

/// Whether `deployment` may be rejected: while it awaits approval, by
/// anyone who may approve, and also by whoever requested it (withdrawing
/// it) or approved it already (changing their mind).
pub fn may_reject(deployment: &Deployment, _requester: &str, _rejecter: &str) -> Result<(), Rejection> {
    if !deployment.awaiting_approval() {
        return Err(Rejection::Conflict(format!(
            "deployment {} is not awaiting approval (it is {}); `slipway cancel` stops a deployment that started",
            deployment.id,
            deployment.status_word()
        )));
    }
    Ok(())
}

/// A freeze window in force: its schedule and when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Freeze {
    pub schedule: String,
    pub until: DateTime<Utc>,
}

/// The most approvals an environment may require: more people than any
/// team has would leave every deployment waiting for ever.
pub const MAX_APPROVALS: u32 = 10;

/// A number of approvals to require, checked (0 lifts the requirement).
pub fn check_approvals(approvals: u32) -> Result<u32, String> {
    if approvals > MAX_APPROVALS {
        return Err(format!("approvals: expected 0 to {MAX_APPROVALS} (0 lifts the requirement), found {approvals}"));
    }
    Ok(approvals)
}

/// A cron schedule (5 fields, or 6 with seconds first), checked.
pub fn check_schedule(schedule: &str) -> Result<croner::Cron, String> {
    croner::Cron::from_str(schedule).map_err(|e| {
        format!("`{schedule}` is not a cron schedule ({e}); expected e.g. \"0 18 * * FRI\" (minute hour day month weekday, UTC)")
    })
}

/// The window of `windows` (schedule -> seconds) that `now` is inside, if
/// any: one whose schedule matched at most its duration ago. The one that
/// ends last wins, so the refusal names when deploying opens again.
pub fn frozen<'a>(windows: impl IntoIterator<Item = (&'a String, &'a u64)>, now: DateTime<Utc>) -> Option<Freeze> {
    let mut found: Option<Freeze> = None;
    for (schedule, seconds) in windows {
        let Ok(cron) = check_schedule(schedule) else { continue };
        let length = chrono::Duration::seconds(i64::try_from(*seconds).unwrap_or(i64::MAX / 1000).min(i64::MAX / 1000));
        let from = now - length;
        // The first start after `now - duration` (so it ends after now):
        // inside if it is not after now. Exclusive, because cron matches
        // whole seconds: looking from `from` inclusively matched the second
        // `from` falls in, a fraction before it, and a window that had
        // ended (or ended exactly now) hid the one in force after it.
        let Ok(start) = cron.find_next_occurrence(&from, false) else { continue };
        let until = start + length;
        if start <= now && until > now && found.as_ref().is_none_or(|f| until > f.until) {
            found = Some(Freeze { schedule: schedule.clone(), until });
        }
    }
    found
}

/// Whether `environment` of `p` has the freeze window `schedule` to
/// remove; if not, the refusal names the windows it has.
pub fn freeze_to_remove(p: &Project, environment: &str, schedule: &str) -> Result<(), Rejection> {
    let windows = p.freezes.get(environment).filter(|w| !w.is_empty());
    if windows.is_some_and(|w| w.contains_key(schedule)) {
        return Ok(());
    }
    let has = match windows {
        None => "it has none".to_string(),
        Some(w) => {
            let listed: Vec<String> = w.iter().map(|(s, seconds)| format!("\"{s}\" for {}", duration_text(*seconds))).collect();
            format!("its windows: {}", listed.join(", "))
        }
    };
    Err(Rejection::NotFound(format!("{} {environment} has no freeze window \"{schedule}\" to remove; {has}", p.name)))
}

/// A number of seconds as `parse_duration` reads it, in the largest unit
/// that divides it exactly: 230400 is `64h`.
pub fn duration_text(seconds: u64) -> String {
    match seconds {
        s if s > 0 && s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        s if s > 0 && s.is_multiple_of(3600) => format!("{}h", s / 3600),
        s if s > 0 && s.is_multiple_of(60) => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Parses `64h`, `90m`, `2d`, `3600s` or a number of seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let bad = || format!("`{text}` is not a duration: expected e.g. 64h, 90m, 2d or 3600s");
    let (number, unit) = text.trim().split_at(text.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(text.trim().len()));
    let n: u64 = number.parse().map_err(|_| bad())?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    match n.checked_mul(factor) {
        Some(0) => Err(format!("`{text}` is no time at all: expected at least 1s")),
        None => Err(format!("`{text}` is too long a duration")),
        Some(s) => Ok(s),
    }
}

/// What a new deployment's request must carry: its approvals, or the
/// freeze it overrides; or why it is refused.
pub fn gate(p: &Project, environment: &str, now: DateTime<Utc>, override_freeze: Option<(&str, &str)>) -> Result<Vec<Event>, Rejection> {
    let mut events = Vec::new();
    if let Some(freeze) = p.freezes.get(environment).and_then(|w| frozen(w, now)) {
        match override_freeze {
            Some((by, reason)) if !reason.trim().is_empty() => events.push(Event::FreezeOverridden(FreezeOverridden {
                schedule: freeze.schedule,
                until: freeze.until,
                by: by.into(),
                reason: reason.into(),
            })),
            _ => {
                return Err(Rejection::Conflict(format!(
                    "{} {environment} is frozen by the window \"{}\" until {}; an admin may deploy anyway with --override-freeze REASON",
                    p.name,
                    freeze.schedule,
                    freeze.until.format("%Y-%m-%dT%H:%M:%SZ")
                )))
            }
        }
    }
    if let Some(&approvals) = p.protections.get(environment).filter(|a| **a > 0) {
        events.push(Event::ApprovalRequired(ApprovalRequired { approvals }));
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use slipway_proto::event::{
        BuildMode, DeploymentApproved, DeploymentRequested, EnvironmentProtected, FreezeWindowRemoved, FreezeWindowSet, StepDispatched,
    };
    use slipway_proto::Step;
    use uuid::Uuid;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap_or_default().with_timezone(&Utc)
    }

    fn waiting(approvals: u32) -> Deployment {
        let requested = Event::DeploymentRequested(DeploymentRequested {
            deployment_id: Uuid::nil(),
            project: "shop".into(),
            environment: "live".into(),
            repository: "/r".into(),
            git_ref: "main".into(),
            mode: BuildMode::Cloud,
            no_cache: false,
            run_release: true,
            settings: Default::default(),
            dry_run: false,
            rollback_of: None,
            promoted_from: None,
            replay_of: None,
            source: Default::default(),
        });
        let d = crate::deployment::evolve(None, &requested).unwrap_or_else(|e| panic!("{e}"));
        crate::deployment::evolve(Some(d), &Event::ApprovalRequired(ApprovalRequired { approvals })).unwrap_or_else(|e| panic!("{e}"))
    }

    fn approved(d: Deployment, by: &str) -> Deployment {
        let e = Event::DeploymentApproved(DeploymentApproved { by: by.into(), reason: String::new() });
        crate::deployment::evolve(Some(d), &e).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn another_actor_approves_and_the_requester_cannot() {
        let d = waiting(2);
        assert_eq!((d.awaiting_approval(), d.status_word()), (true, "awaiting approval"));
        let refused = may_approve(&d, "cli:ann", "cli:ann").unwrap_err();
        assert!(matches!(refused, Rejection::Forbidden(_)) && refused.message().contains("cannot approve it too"), "{refused:?}");
        assert_eq!(may_approve(&d, "cli:ann", "token:bob"), Ok(()));
        let d = approved(d, "token:bob");
        assert!(matches!(may_approve(&d, "cli:ann", "token:bob"), Err(Rejection::Forbidden(_))), "not twice");
        assert!(d.awaiting_approval(), "one of two");
        let d = approved(d, "token:eve");
        assert!(!d.awaiting_approval());
        assert!(matches!(may_approve(&d, "cli:ann", "token:zed"), Err(Rejection::Conflict(_))), "nothing left to approve");
    }

    #[test]
    fn the_requester_and_an_approver_may_reject_while_it_waits() {
        let d = waiting(2);
        assert_eq!(may_reject(&d, "cli:ann", "cli:ann"), Ok(()), "the requester withdraws it");
        let d = approved(d, "token:bob");
        assert_eq!(may_reject(&d, "cli:ann", "token:bob"), Ok(()), "an approver changes their mind");
        let d = approved(d, "token:eve");
        let refused = may_reject(&d, "cli:ann", "token:zed").unwrap_err();
        assert!(matches!(&refused, Rejection::Conflict(m) if m.contains("slipway cancel")), "{refused:?}");
    }

    #[test]
    fn the_decider_starts_nothing_until_approved() {
        use crate::decider::{decide, EnvironmentView};
        let view = EnvironmentView { may_start: true, ..EnvironmentView::default() };
        assert!(decide(&waiting(1), &view).is_empty());
        let started = decide(&approved(waiting(1), "token:bob"), &view);
        assert!(matches!(started.as_slice(), [crate::Decision::Dispatch(_)]), "{started:?}");
        // An unprotected deployment never waits.
        let mut d = waiting(0);
        assert!(!d.awaiting_approval());
        // Until its first step is dispatched it waits behind the
        // deployments ahead of it in its environment.
        assert_eq!(d.status_word(), "queued");
        // Approved, it is queued too until its step goes out.
        assert_eq!(approved(waiting(1), "token:bob").status_word(), "queued");
        d = crate::deployment::evolve(
            Some(d),
            &Event::StepDispatched(StepDispatched {
                step: Step::CheckServices,
                command_id: Uuid::nil(),
                attempt: 1,
                deadline: None,
                dispatched_at: None,
            }),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.status_word(), "running");
        assert!(d.started());
        // Cancelled once its first step ran: it failed at that step.
        let cancel = Event::CancelRequested(slipway_proto::event::CancelRequested { reason: "cancelled by ann".into() });
        let d = crate::deployment::evolve(Some(d), &cancel).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.failure_text().as_deref(), Some("failed at check_services: cancelled by ann"));
    }

    #[test]
    fn a_deployment_rejected_while_it_waits_failed_before_it_started() {
        let d = waiting(1);
        assert!(!d.started() && d.failure_text().is_none());
        let cancel = Event::CancelRequested(slipway_proto::event::CancelRequested { reason: "rejected by token:bob: not today".into() });
        let d = crate::deployment::evolve(Some(d), &cancel).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(d.status_word(), "failed");
        assert_eq!(d.failure_text().as_deref(), Some("failed before it started: rejected by token:bob: not today"));
    }

    #[test]
    fn a_deployment_inside_a_window_is_frozen_and_the_window_is_named() {
        let windows = [("0 18 * * FRI".to_string(), 64 * 3600)];
        let windows = || windows.iter().map(|(s, d)| (s, d));
        // Friday 2026-12-04 18:00 UTC to Monday 10:00.
        assert_eq!(frozen(windows(), at("2026-12-04T17:59:59Z")), None);
        let f = frozen(windows(), at("2026-12-04T18:00:00Z")).unwrap();
        assert_eq!((f.schedule.as_str(), f.until), ("0 18 * * FRI", at("2026-12-07T10:00:00Z")));
        assert!(frozen(windows(), at("2026-12-06T12:00:00Z")).is_some());
        assert_eq!(frozen(windows(), at("2026-12-07T10:00:00Z")), None);
        assert_eq!(frozen(windows(), at("2026-12-09T12:00:00Z")), None);
    }

    #[test]
    fn a_window_that_started_a_whole_duration_ago_less_a_fraction_of_a_second_is_in_force() {
        // Every minute, for an hour: always frozen, including in the first
        // second of a minute, when `now - 1h` has a fraction of a second
        // past the minute the window started at.
        let windows = [("* * * * *".to_string(), 3600)];
        for now in ["2026-12-03T09:01:00.500Z", "2026-12-03T09:01:00Z", "2026-12-03T09:01:59.999Z"] {
            let f = frozen(windows.iter().map(|(s, d)| (s, d)), at(now));
            assert!(f.as_ref().is_some_and(|f| f.until > at(now)), "{now}: {f:?}");
        }
    }

    #[test]
    fn approvals_are_bounded() {
        assert_eq!(check_approvals(0), Ok(0));
        assert_eq!(check_approvals(MAX_APPROVALS), Ok(MAX_APPROVALS));
        let refused = check_approvals(1_000_000).unwrap_err();
        assert!(refused.contains("expected 0 to 10") && refused.contains("1000000"), "{refused}");
    }

    #[test]
    fn the_gate_refuses_a_frozen_deploy_unless_overridden_with_a_reason_and_adds_approvals() {
        let mut p = crate::project::fold([&Event::ProjectCreated(slipway_proto::event::ProjectCreated {
            name: "shop".into(),
            repository: "/r".into(),
            mirror_of: None,
            environments: vec!["live".into(), "test".into()],
            default_branch: "main".into(),
        })])
        .unwrap_or_else(|| panic!("a project"));
        p.apply(&Event::FreezeWindowSet(FreezeWindowSet {
            environment: "live".into(),
            schedule: "0 18 * * FRI".into(),
            duration_seconds: 3600,
        }));
        p.apply(&Event::EnvironmentProtected(EnvironmentProtected { environment: "live".into(), approvals: 1 }));
        let inside = at("2026-12-04T18:30:00Z");
        let refused = gate(&p, "live", inside, None).unwrap_err();
        assert!(
            matches!(refused, Rejection::Conflict(_)) && refused.message().contains("\"0 18 * * FRI\" until 2026-12-04T19:00:00Z"),
            "{refused:?}"
        );
        assert!(matches!(gate(&p, "live", inside, Some(("cli:root", " "))), Err(Rejection::Conflict(_))), "a reason is needed");
        let events = gate(&p, "live", inside, Some(("cli:root", "hotfix"))).unwrap_or_default();
        assert!(
            matches!(events.as_slice(), [Event::FreezeOverridden(o), Event::ApprovalRequired(a)] if o.reason == "hotfix" && a.approvals == 1)
        );
        assert_eq!(gate(&p, "live", at("2026-12-04T19:00:00Z"), None).map(|e| e.len()), Ok(1));
        assert_eq!(gate(&p, "test", inside, None), Ok(vec![]), "other environments are untouched");
        // Removing names the windows there are when the schedule is not one.
        assert_eq!(freeze_to_remove(&p, "live", "0 18 * * FRI"), Ok(()));
        let unknown = freeze_to_remove(&p, "live", "0 5 * * *").unwrap_err();
        assert_eq!(
            unknown,
            Rejection::NotFound(format!(
                "{} live has no freeze window \"0 5 * * *\" to remove; its windows: \"0 18 * * FRI\" for 1h",
                p.name
            ))
        );
        assert!(freeze_to_remove(&p, "test", "0 18 * * FRI").unwrap_err().message().ends_with("it has none"));
        p.apply(&Event::EnvironmentProtected(EnvironmentProtected { environment: "live".into(), approvals: 0 }));
        p.apply(&Event::FreezeWindowRemoved(FreezeWindowRemoved { environment: "live".into(), schedule: "0 18 * * FRI".into() }));
        assert_eq!(gate(&p, "live", inside, None), Ok(vec![]));
        assert!(freeze_to_remove(&p, "live", "0 18 * * FRI").unwrap_err().message().ends_with("it has none"), "a window removed is gone");
    }

    #[test]
    fn durations_and_schedules_are_checked() {
        assert_eq!(parse_duration("64h"), Ok(64 * 3600));
        assert_eq!(parse_duration("90m"), Ok(5400));
        assert_eq!(parse_duration("2d"), Ok(172_800));
        assert_eq!(parse_duration("30"), Ok(30));
        assert!(parse_duration("h").is_err() && parse_duration("3w").is_err());
        assert_eq!(parse_duration("0s"), Err("`0s` is no time at all: expected at least 1s".into()));
        assert!(parse_duration("0h").is_err() && parse_duration("99999999999999999d").unwrap_err().contains("too long"));
        for seconds in [1, 59, 60, 5400, 3600 * 64, 172_800] {
            assert_eq!(parse_duration(&duration_text(seconds)), Ok(seconds), "{}", duration_text(seconds));
        }
        assert_eq!((duration_text(230_400), duration_text(90), duration_text(172_800)), ("64h".into(), "90s".into(), "2d".into()));
        assert!(check_schedule("0 18 * * FRI").is_ok());
        assert!(check_schedule("every friday").unwrap_err().contains("is not a cron schedule"));
    }
}
