//! Preview environments, decided without I/O: what a pull request event or
//! a branch push does to its preview (add it, deploy its head, wait for an
//! approval, remove it), how a preview is named (`pr-42`, or a DNS-safe,
//! unique slug of the branch), which previews outlived their time to live,
//! what removing one takes (cancel what is queued or running, retire what
//! serves, drop the route) and whether a fork's commit may be approved.
//! Kept pure so each rule is a unit test; `lifecycle` and `pull_requests`
//! read the state these functions need and record what they decide.
//!
//! Forks: a pull request whose head lives in another repository would run
//! its author's code with the project's secrets, so each new head commit
//! of a fork's pull request waits until someone with deploy scope approves
//! that commit (approvals are per head commit, not per pull request: an
//! approved pull request that is pushed to again waits again).

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use slipway_proto::command::RetireRelease;
use slipway_proto::config::is_dns_label;
use slipway_proto::event::{PreviewKind, PreviewOrigin, PreviewTrigger};
use uuid::Uuid;

use crate::environment::Environment;
use crate::project::{Preview, PreviewRule, Project};
use crate::push::{self, Push};
use crate::rejection::Rejection;

/// A preview's time to live when its rule names none: 7 days.
pub const DEFAULT_TTL_SECONDS: u64 = 7 * 86_400;

/// A pull request (GitLab: merge request) event, as every provider's
/// payload is read into it (`webhook::parse_pull_request`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    pub action: PrAction,
    /// The provider's own word for the action, as recorded.
    pub raw_action: String,
    pub number: u64,
    /// The head commit: 40 or 64 lowercase hex digits.
    pub head_commit: String,
    pub head_branch: String,
    /// The head lives in another repository than the base (a fork).
    pub fork: bool,
    pub sender: String,
}

/// What a pull request event asks of its preview.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrAction {
    /// Opened or reopened.
    Open,
    /// New commits (GitHub `synchronize`, Gitea `synchronized`, GitLab `update`).
    Update,
    /// Closed or merged.
    Close,
    /// Anything else (edited, labeled, approved...): nothing to do.
    Other,
}

/// A preview to add before deploying to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPreview {
    pub name: String,
    pub inherits: String,
    pub origin: PreviewOrigin,
    pub ttl_seconds: u64,
}

/// What to do with a pull request event or a branch push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Not for previews (no rule, an action that changes nothing): record nothing.
    Ignore(String),
    /// Record the event; leave the preview as it is, for this reason.
    Unchanged { environment: String, reason: String },
    /// Add the preview if `add` says so, then deploy `commit` to it.
    Deploy { environment: String, add: Option<NewPreview>, commit: String, rule: PreviewTrigger },
    /// Add the preview if needed, record the head; deploy nothing until
    /// someone approves this commit.
    AwaitApproval { environment: String, add: Option<NewPreview>, commit: String },
    /// Remove the preview, for this reason.
    Remove { environment: String, reason: String },
}

/// The environment of pull request `number`.
pub fn pr_environment(number: u64) -> String {
    format!("pr-{number}")
}

/// The preview rule for pull requests, if the project has one.
fn pull_request_rule(p: &Project) -> Option<&PreviewRule> {
    p.preview_rules.iter().find(|r| r.trigger == PreviewTrigger::PullRequests)
}

fn is_pr_preview(preview: &Preview, number: u64) -> bool {
    preview.origin.as_ref().is_some_and(|o| o.kind == PreviewKind::PullRequest && o.number == Some(number))
}

/// The plan for a pull request event under the project's preview rules.
pub fn plan_pull_request(p: &Project, pr: &PullRequest) -> Plan {
    let environment = pr_environment(pr.number);
    let existing = p.previews.get(&environment);
    if p.environments.contains_key(&environment) && !existing.is_some_and(|e| is_pr_preview(e, pr.number)) {
        return Plan::Ignore(format!("environment `{environment}` exists and is not pull request #{}'s preview", pr.number));
    }
    if pr.action == PrAction::Close {
        return match existing {
            Some(_) => Plan::Remove { environment, reason: format!("pull request #{} was closed ({})", pr.number, pr.raw_action) },
            None => Plan::Unchanged { environment, reason: format!("pull request #{} has no preview to remove", pr.number) },
        };
    }
    if pr.action == PrAction::Other {
        return Plan::Ignore(format!("pull request action `{}` changes no preview", pr.raw_action));
    }
    let Some(rule) = pull_request_rule(p) else {
        return Plan::Ignore("the project has no preview rule for pull requests".into());
    };
    let add = existing.is_none().then(|| NewPreview {
        name: environment.clone(),
        inherits: rule.inherit.clone(),
        origin: PreviewOrigin {
            kind: PreviewKind::PullRequest,
            number: Some(pr.number),
            branch: pr.head_branch.clone(),
            head_repo_fork: pr.fork,
        },
        ttl_seconds: rule.ttl_seconds,
    });
    if let Some(e) = existing.filter(|e| e.head.as_deref() == Some(pr.head_commit.as_str())) {
        let waiting = pr.fork && !e.approved.contains(&pr.head_commit);
        let reason = if waiting { "waiting for an approval of" } else { "already deployed" };
        return Plan::Unchanged { environment, reason: format!("{reason} {}", push::short(&pr.head_commit)) };
    }
    let approved = existing.is_some_and(|e| e.approved.contains(&pr.head_commit));
    if pr.fork && !approved {
        return Plan::AwaitApproval { environment, add, commit: pr.head_commit.clone() };
    }
    Plan::Deploy { environment, add, commit: pr.head_commit.clone(), rule: PreviewTrigger::PullRequests }
}

/// The preview a branch push concerns under the `branches` preview rules:
/// a push to a matching branch deploys its preview (added if missing), a
/// deletion removes it. `None`: no branch preview is concerned.
pub fn plan_branch_push(p: &Project, push: &Push) -> Option<Plan> {
    let branch = push.branch()?;
    let existing = p
        .previews
        .iter()
        .find(|(_, v)| v.origin.as_ref().is_some_and(|o| o.kind == PreviewKind::Branch && o.branch == branch))
        .map(|(name, _)| name.clone());
    if push.is_deletion() {
        return existing.map(|environment| Plan::Remove { environment, reason: format!("branch {branch} was deleted") });
    }
    let rule = p.preview_rules.iter().find(|r| matches!(&r.trigger, PreviewTrigger::Branches(g) if push::glob_matches(g, branch)))?;
    if push.head_message.as_deref().and_then(push::skip_phrase).is_some() {
        return None;
    }
    let (environment, add) = match existing {
        Some(name) => (name, None),
        None => {
            let name = branch_environment(p, branch);
            let origin = PreviewOrigin { kind: PreviewKind::Branch, number: None, branch: branch.into(), head_repo_fork: false };
            let add = NewPreview { name: name.clone(), inherits: rule.inherit.clone(), origin, ttl_seconds: rule.ttl_seconds };
            (name, Some(add))
        }
    };
    Some(Plan::Deploy { environment, add, commit: push.commit.clone(), rule: rule.trigger.clone() })
}

/// A DNS-safe environment name for `branch`, unique in the project: the
/// branch lowercased, every run of other characters one `-`, at most 63
/// characters. Taken already (by another environment), or shaped like a
/// pull request's (`pr-7`), it gets `-` and 6 hex digits of the branch's
/// SHA-256 instead of its tail.
pub fn branch_environment(p: &Project, branch: &str) -> String {
    let mut slug = String::new();
    for c in branch.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            slug.push(c);
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_matches('-');
    let slug = if slug.is_empty() { "branch" } else { slug };
    let plain: String = slug.chars().take(63).collect::<String>().trim_end_matches('-').to_owned();
    let pr_shaped = plain.strip_prefix("pr-").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !pr_shaped && !p.environments.contains_key(&plain) && is_dns_label(&plain) {
        return plain;
    }
    let hash = hex::encode(Sha256::digest(branch.as_bytes()));
    let head: String = slug.chars().take(63 - 7).collect::<String>().trim_end_matches('-').to_owned();
    format!("{head}-{}", &hash[..6])
}

/// The previews whose time to live ran out at `now` (no push for that
/// long), each with the reason recorded on its removal.
pub fn expired(p: &Project, now: DateTime<Utc>) -> Vec<(String, String)> {
    p.previews
        .iter()
        .filter_map(|(name, preview)| {
            let ttl = preview.ttl_seconds?;
            let deadline = preview.last_push + chrono::Duration::seconds(i64::try_from(ttl).unwrap_or(i64::MAX / 1000));
            (deadline <= now).then(|| (name.clone(), format!("no push for {}", describe_seconds(ttl))))
        })
        .collect()
}

/// How long a removed preview's serving containers keep answering after
/// its route is removed, before they are stopped: routers drop the route
/// within a moment of its recording, and requests they had already sent
/// there finish. Removal happens outside the engine (the API, webhooks,
/// the CLI), which has no `--drain` of its own, so it is fixed here; a
/// preview serves no production traffic worth a longer one.
pub const REMOVAL_DRAIN_SECONDS: u64 = 5;

/// What removing an environment takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// Deployments queued or running there: cancelled (the engine then
    /// removes their containers and moves nothing back into the route).
    pub cancel: Vec<Uuid>,
    /// The serving release's retirement.
    pub retire: Option<RetireRelease>,
    /// Its route is removed: it has one, or a deployment cancelled here may
    /// cut over before its cancellation is seen.
    pub route: bool,
}

/// Removing an environment in state `env`, whose route exists if `routed`.
///
/// A deployment running there may have switched the route after `routed`
/// was read, and before the removal is written: the removal is written at
/// the environment's version, not the routes stream's. So the route is
/// removed whenever a deployment is cancelled too; the routes projection
/// then ignores that deployment's move back (a revert or rollback), and
/// only a new release's cutover routes the name again.
pub fn removal(env: &Environment, routed: bool, drain_seconds: u64) -> Removal {
    Removal {
        cancel: env.queue.clone(),
        retire: env.active.as_ref().map(|a| RetireRelease { deployment_id: a.deployment, containers: a.containers.clone(), drain_seconds }),
        route: routed || !env.queue.is_empty(),
    }
}

/// The reason a removal's cancellations record.
pub fn cancel_reason(environment: &str, why: &str) -> String {
    format!("environment {environment} removed: {why}")
}

/// The commit someone may approve on preview `environment`: the head of a
/// fork's pull request, not approved yet. Otherwise what stands in the way.
pub fn approvable(p: &Project, environment: &str) -> Result<String, Rejection> {
    let Some(preview) = p.previews.get(environment) else {
        let message = format!("project `{}` has no preview environment `{environment}`", p.name);
        // A named environment deploys without approvals: asking is bad input.
        return Err(if p.environments.contains_key(environment) { Rejection::invalid(message) } else { Rejection::not_found(message) });
    };
    if !preview.origin.as_ref().is_some_and(|o| o.head_repo_fork) {
        return Err(Rejection::invalid(format!("`{environment}` is not a fork's pull request: it deploys without an approval")));
    }
    let Some(head) = &preview.head else {
        return Err(Rejection::conflict(format!("`{environment}` has no head commit to approve yet")));
    };
    if preview.approved.contains(head) {
        return Err(Rejection::invalid(format!("{} is already approved on `{environment}`", push::short(head))));
    }
    Ok(head.clone())
}

/// Checks a preview rule as it is set, naming what is wrong.
pub fn check_rule(p: &Project, trigger: &PreviewTrigger, inherit: &str, ttl_seconds: u64) -> Result<(), String> {
    if let PreviewTrigger::Branches(glob) = trigger {
        push::check_glob(glob)?;
    }
    if p.previews.contains_key(inherit) || !p.environments.contains_key(inherit) {
        let named: Vec<&str> = p.environments.keys().filter(|e| !p.previews.contains_key(*e)).map(String::as_str).collect();
        return Err(format!("previews inherit a named environment of `{}`; `{inherit}` is not one (it has: {})", p.name, named.join(", ")));
    }
    if ttl_seconds == 0 || ttl_seconds > 366 * 86_400 {
        return Err(format!("a preview's time to live must be 1 second to 366 days, not {ttl_seconds} s"));
    }
    Ok(())
}

/// Reads a time to live: a number with `s`, `m`, `h` or `d` (`7d`, `90m`, `2s`).
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let unit = text.chars().last().ok_or("a time to live is a number with s, m, h or d, such as 7d")?;
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(format!("time to live `{text}` needs a unit: s, m, h or d (such as 7d)")),
    };
    let number: u64 =
        text[..text.len() - 1].parse().map_err(|_| format!("time to live `{text}` is not a number with a unit, such as 7d"))?;
    number.checked_mul(scale).ok_or_else(|| format!("time to live `{text}` is too long"))
}

/// `7d`, `90m`, `2s`: the largest unit that divides it.
pub fn describe_seconds(seconds: u64) -> String {
    match seconds {
        s if s > 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use chrono::TimeZone;
    use slipway_proto::event::{EnvironmentAdded, PreviewRuleSet};
    use slipway_proto::Event;

    use super::*;
    use crate::environment::ActiveRelease;

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + seconds, 0).single().unwrap_or_default()
    }

    fn project(rules: &[PreviewTrigger]) -> Project {
        let created = Event::ProjectCreated(slipway_proto::event::ProjectCreated {
            name: "app".into(),
            repository: "file:///srv/app.git".into(),
            mirror_of: None,
            environments: vec!["test".into(), "live".into()],
            default_branch: "main".into(),
        });
        let mut events = vec![created];
        for trigger in rules {
            events.push(Event::PreviewRuleSet(PreviewRuleSet { trigger: trigger.clone(), inherit: "test".into(), ttl_seconds: 60 }));
        }
        crate::project::fold(events.iter()).unwrap_or_else(|| unreachable!("a created project"))
    }

    fn add(p: &mut Project, new: &NewPreview) {
        p.apply(&Event::EnvironmentAdded(EnvironmentAdded {
            name: new.name.clone(),
            inherits: Some(new.inherits.clone()),
            preview: Some(new.origin.clone()),
            ttl_seconds: Some(new.ttl_seconds),
            at: at(0),
        }));
    }

    fn preview_mut<'a>(p: &'a mut Project, name: &str) -> &'a mut Preview {
        p.previews.get_mut(name).unwrap_or_else(|| panic!("no preview {name}"))
    }

    fn pr(action: PrAction, number: u64, head: char, fork: bool) -> PullRequest {
        PullRequest {
            action,
            raw_action: format!("{action:?}").to_lowercase(),
            number,
            head_commit: head.to_string().repeat(40),
            head_branch: "feature/x".into(),
            fork,
            sender: "octocat".into(),
        }
    }

    #[test]
    fn an_opened_pull_request_adds_and_deploys_its_preview_and_closing_removes_it() {
        let mut p = project(&[PreviewTrigger::PullRequests]);
        let Plan::Deploy { environment, add: Some(new), commit, .. } = plan_pull_request(&p, &pr(PrAction::Open, 42, 'a', false)) else {
            panic!("deploy")
        };
        assert_eq!((environment.as_str(), new.inherits.as_str(), new.ttl_seconds, commit), ("pr-42", "test", 60, "a".repeat(40)));
        add(&mut p, &new);
        preview_mut(&mut p, "pr-42").head = Some("a".repeat(40));
        assert!(matches!(plan_pull_request(&p, &pr(PrAction::Update, 42, 'a', false)), Plan::Unchanged { .. }), "same head");
        assert!(matches!(plan_pull_request(&p, &pr(PrAction::Update, 42, 'b', false)), Plan::Deploy { add: None, .. }));
        assert!(matches!(plan_pull_request(&p, &pr(PrAction::Other, 42, 'b', false)), Plan::Ignore(_)));
        assert!(
            matches!(plan_pull_request(&p, &pr(PrAction::Close, 42, 'b', false)), Plan::Remove { environment, .. } if environment == "pr-42")
        );
        assert!(matches!(plan_pull_request(&p, &pr(PrAction::Close, 7, 'b', false)), Plan::Unchanged { .. }));
        let none = project(&[]);
        assert!(matches!(plan_pull_request(&none, &pr(PrAction::Open, 1, 'a', false)), Plan::Ignore(r) if r.contains("no preview rule")));
    }

    #[test]
    fn a_fork_waits_for_an_approval_of_each_head_commit() {
        let mut p = project(&[PreviewTrigger::PullRequests]);
        let Plan::AwaitApproval { add: Some(new), .. } = plan_pull_request(&p, &pr(PrAction::Open, 5, 'a', true)) else { panic!("wait") };
        assert!(new.origin.head_repo_fork);
        add(&mut p, &new);
        assert!(approvable(&p, "pr-5").unwrap_err().message().contains("no head commit"));
        preview_mut(&mut p, "pr-5").head = Some("a".repeat(40));
        assert_eq!(approvable(&p, "pr-5"), Ok("a".repeat(40)));
        preview_mut(&mut p, "pr-5").approved.insert("a".repeat(40));
        assert!(approvable(&p, "pr-5").unwrap_err().message().contains("already approved"));
        assert!(
            matches!(plan_pull_request(&p, &pr(PrAction::Update, 5, 'b', true)), Plan::AwaitApproval { add: None, .. }),
            "a new head waits again"
        );
        assert!(matches!(plan_pull_request(&p, &pr(PrAction::Open, 5, 'a', true)), Plan::Unchanged { .. }));
        assert!(approvable(&p, "test").unwrap_err().message().contains("no preview"));
    }

    #[test]
    fn a_named_environment_called_like_a_pull_request_is_left_alone() {
        let mut p = project(&[PreviewTrigger::PullRequests]);
        p.environments.insert("pr-3".into(), BTreeMap::new());
        assert!(matches!(plan_pull_request(&p, &pr(PrAction::Close, 3, 'a', false)), Plan::Ignore(r) if r.contains("not pull request #3")));
    }

    #[test]
    fn branch_slugs_are_dns_safe_short_and_unique() {
        let mut p = project(&[]);
        assert_eq!(branch_environment(&p, "feature/Login_Page"), "feature-login-page");
        assert_eq!(branch_environment(&p, "--x//y--"), "x-y");
        assert_eq!(branch_environment(&p, "ünïcode"), "n-code");
        let long = branch_environment(&p, &"a".repeat(100));
        assert_eq!(long.len(), 63);
        let taken = branch_environment(&p, "test");
        assert!(taken.starts_with("test-") && taken.len() == 11, "{taken}");
        assert!(branch_environment(&p, "pr-12").starts_with("pr-12-"), "not mistaken for a pull request's");
        assert!(branch_environment(&p, "___").starts_with("branch"));
        p.environments.insert(long.clone(), BTreeMap::new());
        let other = branch_environment(&p, &"a".repeat(100));
        assert!(other.len() <= 63 && other != long && is_dns_label(&other), "{other}");
        for name in [long, other, taken] {
            assert!(is_dns_label(&name), "{name}");
        }
    }

    #[test]
    fn branch_pushes_deploy_their_preview_and_deletions_remove_it() {
        let mut p = project(&[PreviewTrigger::Branches("feature/*".into())]);
        let push = |git_ref: &str, commit: char, message: &str| Push {
            git_ref: git_ref.into(),
            commit: commit.to_string().repeat(40),
            pusher: "alice".into(),
            head_message: Some(message.into()),
            deleted: false,
        };
        let Some(Plan::Deploy { environment, add: Some(new), .. }) = plan_branch_push(&p, &push("refs/heads/feature/a", 'a', "x")) else {
            panic!("deploy")
        };
        assert_eq!(environment, "feature-a");
        add(&mut p, &new);
        assert!(matches!(plan_branch_push(&p, &push("refs/heads/feature/a", 'b', "x")), Some(Plan::Deploy { add: None, .. })));
        assert_eq!(plan_branch_push(&p, &push("refs/heads/main", 'b', "x")), None);
        assert_eq!(plan_branch_push(&p, &push("refs/heads/feature/a", 'b', "[skip deploy]")), None);
        let Some(Plan::Remove { environment, reason }) = plan_branch_push(&p, &push("refs/heads/feature/a", '0', "")) else {
            panic!("remove")
        };
        assert_eq!(environment, "feature-a");
        assert!(reason.contains("deleted"), "{reason}");
        assert_eq!(plan_branch_push(&p, &push("refs/heads/feature/b", '0', "")), None, "no preview to remove");
    }

    #[test]
    fn previews_expire_after_their_time_to_live_without_a_push() {
        let mut p = project(&[PreviewTrigger::PullRequests]);
        let origin = PreviewOrigin { kind: PreviewKind::PullRequest, number: Some(1), branch: "x".into(), head_repo_fork: false };
        add(&mut p, &NewPreview { name: "pr-1".into(), inherits: "test".into(), origin, ttl_seconds: 60 });
        assert_eq!(expired(&p, at(59)), vec![]);
        assert_eq!(expired(&p, at(60)), vec![("pr-1".to_string(), "no push for 1m".to_string())]);
        preview_mut(&mut p, "pr-1").last_push = at(50);
        assert_eq!(expired(&p, at(100)), vec![]);
    }

    #[test]
    fn removal_cancels_the_queue_retires_what_serves_and_drops_the_route() {
        let [serving, running, queued] = [1u128, 2, 3].map(Uuid::from_u128);
        let env = Environment {
            queue: vec![running, queued],
            active: Some(ActiveRelease { deployment: serving, containers: vec!["web".into()], upstreams: vec![], host: String::new() }),
            known: BTreeSet::new(),
            ..Default::default()
        };
        let r = removal(&env, true, 0);
        assert_eq!(r.cancel, vec![running, queued]);
        assert_eq!(r.retire.map(|c| (c.deployment_id, c.containers)), Some((serving, vec!["web".to_string()])));
        assert!(r.route);
        assert_eq!(removal(&Environment::default(), false, 0), Removal { cancel: vec![], retire: None, route: false });
        // Not routed when read, but a deployment runs: it may cut over
        // before its cancellation lands, so the route goes too.
        let first = Environment { queue: vec![running], ..Default::default() };
        assert_eq!(removal(&first, false, 0), Removal { cancel: vec![running], retire: None, route: true });
    }

    #[test]
    fn rules_and_times_to_live_are_checked() {
        let p = project(&[]);
        assert!(check_rule(&p, &PreviewTrigger::PullRequests, "test", 60).is_ok());
        assert!(check_rule(&p, &PreviewTrigger::PullRequests, "prod", 60).unwrap_err().contains("test"));
        assert!(check_rule(&p, &PreviewTrigger::Branches("a//b".into()), "test", 60).is_err());
        assert!(check_rule(&p, &PreviewTrigger::PullRequests, "test", 0).is_err());
        assert_eq!(parse_ttl("7d"), Ok(7 * 86_400));
        assert_eq!(parse_ttl("2s"), Ok(2));
        assert_eq!(parse_ttl("90m"), Ok(5400));
        for bad in ["", "7", "d", "7w", "-1d", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
        assert_eq!((describe_seconds(604_800), describe_seconds(7200), describe_seconds(61)), ("7d".into(), "2h".into(), "61s".into()));
    }
}
