//! What a push means, decided without I/O: which auto-deploy rules a
//! pushed branch matches (branch globs), whether the push asks not to be
//! deployed (`[skip deploy]`, a deleted branch), which earlier push
//! deployments it supersedes, and the actor its deployments are recorded
//! under. Kept pure so that every rule is a unit test, and so that the
//! webhook handler (`api::hooks`) and the recording (`auto_deploy`) only
//! carry out what is decided here.

use std::collections::BTreeSet;

use slipway_proto::event::WebhookProvider;
use uuid::Uuid;

use crate::project::AutoDeployRule;

/// A push, as every provider's payload is read into it (`webhook`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The full ref (`refs/heads/main`, `refs/tags/v1`).
    pub git_ref: String,
    /// The commit the ref points at now (`after`): 40 or 64 hex digits,
    /// all zeros when the ref was deleted.
    pub commit: String,
    /// Who pushed, as the provider names them.
    pub pusher: String,
    /// The head commit's message, when the payload carries one.
    pub head_message: Option<String>,
    /// The provider says the ref was deleted.
    pub deleted: bool,
}

impl Push {
    /// The branch pushed, if the ref is a branch.
    pub fn branch(&self) -> Option<&str> {
        self.git_ref.strip_prefix("refs/heads/").filter(|b| !b.is_empty())
    }

    /// Was the ref deleted (the flag, or `after` all zeros)?
    pub fn is_deletion(&self) -> bool {
        self.deleted || (!self.commit.is_empty() && self.commit.bytes().all(|b| b == b'0'))
    }
}

/// The phrases that, in a head commit's message, keep a push from deploying.
pub const SKIP_PHRASES: [&str; 2] = ["[skip deploy]", "[deploy skip]"];

/// The skip phrase `message` contains (any letter case), if any.
pub fn skip_phrase(message: &str) -> Option<&'static str> {
    let lower = message.to_lowercase();
    SKIP_PHRASES.into_iter().find(|p| lower.contains(p))
}

/// One environment a push deploys to, and the rule that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub environment: String,
    pub rule: String,
}

/// What to do with a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Record the push as skipped, for this reason; deploy nothing.
    Skip(String),
    /// Deploy the pushed commit to each target (none: no rule matched).
    Deploy(Vec<Target>),
}

/// The plan for `push` under `rules` (in the order they were set). A
/// deleted branch and a head commit with a skip phrase deploy nothing;
/// otherwise every environment with a rule matching the branch gets one
/// deployment (the first matching rule names it). Tags match no rule.
pub fn plan(rules: &[AutoDeployRule], push: &Push) -> Plan {
    if push.is_deletion() {
        return Plan::Skip(format!("the push deleted {}", push.git_ref));
    }
    if let Some(phrase) = push.head_message.as_deref().and_then(skip_phrase) {
        return Plan::Skip(format!("the head commit's message says {phrase}"));
    }
    let Some(branch) = push.branch() else { return Plan::Deploy(Vec::new()) };
    let mut targets: Vec<Target> = Vec::new();
    for rule in rules.iter().filter(|r| glob_matches(&r.branch, branch)) {
        if !targets.iter().any(|t| t.environment == rule.environment) {
            targets.push(Target { environment: rule.environment.clone(), rule: rule.branch.clone() });
        }
    }
    Plan::Deploy(targets)
}

/// The deployments a new push to an environment supersedes: those an
/// earlier push requested that still wait in the environment's queue. The
/// queue's head is running (or about to start) and keeps its turn; only a
/// deployment behind it has not started, so only those are cancelled.
pub fn superseded(queue: &[Uuid], push_deployments: &BTreeSet<Uuid>) -> Vec<Uuid> {
    queue.iter().skip(1).filter(|d| push_deployments.contains(d)).copied().collect()
}

/// The reason recorded on a superseded deployment's `CancelRequested`.
pub fn superseded_reason(by: Uuid, commit: &str) -> String {
    format!("superseded by {by} (push of {})", short(commit))
}

/// The first 12 hex digits of a commit.
pub fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// The actor of what a push records: `webhook:<provider>:<pusher>`. The
/// pusher's name comes from the payload, so it is cut to 64 characters and
/// stripped of control characters and colons.
pub fn actor(provider: WebhookProvider, pusher: &str) -> String {
    let name: String = pusher.chars().filter(|c| !c.is_control() && *c != ':').take(64).collect();
    let name = name.trim();
    format!("webhook:{provider}:{}", if name.is_empty() { "unknown" } else { name })
}

/// Does branch glob `glob` match `branch`? Both are split at `/`; a `*`
/// matches any run of characters within one segment, and a segment that is
/// `**` matches any number of whole segments (none included). Everything
/// else matches itself. A branch with an empty segment (which git refuses
/// to make) matches nothing.
pub fn glob_matches(glob: &str, branch: &str) -> bool {
    let pattern: Vec<&str> = glob.split('/').collect();
    let segments: Vec<&str> = branch.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return false;
    }
    segments_match(&pattern, &segments)
}

/// Dynamic programming over (pattern segment, branch segment), so that
/// many `**` stay polynomial: `ok[i][j]` says pattern[i..] matches segments[j..].
fn segments_match(pattern: &[&str], segments: &[&str]) -> bool {
    let (p, s) = (pattern.len(), segments.len());
    let mut ok = vec![vec![false; s + 1]; p + 1];
    ok[p][s] = true;
    for i in (0..p).rev() {
        for j in (0..=s).rev() {
            ok[i][j] = if pattern[i] == "**" {
                ok[i + 1][j] || (j < s && ok[i][j + 1])
            } else {
                j < s && ok[i + 1][j + 1] && segment_matches(pattern[i].as_bytes(), segments[j].as_bytes())
            };
        }
    }
    ok[0][0]
}

/// `*` matches any run of bytes (the classic greedy match with one
/// backtrack point: linear in practice, never exponential).
fn segment_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|b| *b == b'*')
}

/// Checks a branch glob as a rule takes it, naming what is wrong.
pub fn check_glob(glob: &str) -> Result<(), String> {
    if glob.is_empty() || glob.len() > 200 {
        return Err(format!("branch glob `{glob}` must be 1-200 characters"));
    }
    if glob.starts_with('-') {
        return Err(format!("branch glob `{glob}` looks like an option"));
    }
    if let Some(c) = glob.chars().find(|c| c.is_whitespace() || c.is_control() || "?[]\\~^:".contains(*c)) {
        return Err(format!(
            "branch glob `{glob}` contains `{}`: branches cannot, and globs here take only `*` (within a segment) and `**` (whole segments)",
            c.escape_default()
        ));
    }
    for segment in glob.split('/') {
        if segment.is_empty() {
            return Err(format!("branch glob `{glob}` has an empty segment (a leading, trailing or double `/`)"));
        }
        if segment.contains("**") && segment != "**" {
            return Err(format!("branch glob `{glob}`: `**` must be a whole segment (`release/**`), not part of `{segment}`"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(branch: &str, environment: &str) -> AutoDeployRule {
        AutoDeployRule { branch: branch.into(), environment: environment.into(), poll_seconds: None }
    }

    fn push(git_ref: &str, message: &str) -> Push {
        Push { git_ref: git_ref.into(), commit: "a".repeat(40), pusher: "alice".into(), head_message: Some(message.into()), deleted: false }
    }

    #[test]
    fn globs_match_within_a_segment_and_double_stars_across_segments() {
        let cases = [
            ("main", "main", true),
            ("main", "mainline", false),
            ("main", "feature/main", false),
            ("release/*", "release/1.2", true),
            ("release/*", "release/", false),
            ("release/*", "release", false),
            ("release/*", "release/1.2/hotfix", false),
            ("release/v*", "release/v2", true),
            ("release/v*", "release/2", false),
            ("*", "main", true),
            ("*", "feature/x", false),
            ("*-rc", "2.0-rc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("**", "feature/deep/x", true),
            ("release/**", "release/1/2", true),
            ("release/**", "release", true),
            ("**/hotfix", "a/b/hotfix", true),
            ("**/hotfix", "hotfix", true),
            ("**/hotfix", "a/hotfixes", false),
            ("feature/**/ui", "feature/x/y/ui", true),
        ];
        for (glob, branch, expected) in cases {
            assert_eq!(glob_matches(glob, branch), expected, "{glob} vs {branch}");
        }
    }

    #[test]
    fn many_stars_do_not_blow_up() {
        let glob = "*a*a*a*a*a*a*a*a*a*a*a*b";
        let branch = "a".repeat(5000);
        assert!(!glob_matches(glob, &branch));
    }

    #[test]
    fn many_double_stars_do_not_blow_up() {
        let glob = vec!["**"; 60].join("/") + "/x";
        let branch = vec!["a"; 300].join("/");
        assert!(!glob_matches(&glob, &branch));
        assert!(glob_matches(&glob, &(branch + "/x")));
    }

    #[test]
    fn bad_globs_are_refused_with_the_reason() {
        assert!(check_glob("main").is_ok());
        assert!(check_glob("release/*").is_ok());
        assert!(check_glob("release/**").is_ok());
        for (glob, says) in [
            ("", "1-200"),
            ("-x", "option"),
            ("a b", "contains"),
            ("rel?ase", "contains `?`"),
            ("release/", "empty segment"),
            ("a//b", "empty segment"),
            ("a**", "whole segment"),
        ] {
            let e = check_glob(glob).unwrap_err();
            assert!(e.contains(says), "{glob}: {e}");
        }
    }

    #[test]
    fn a_push_deploys_to_each_matching_environment_once() {
        let rules = [rule("main", "test"), rule("*", "test"), rule("main", "live"), rule("release/*", "live")];
        let plan = plan(&rules, &push("refs/heads/main", "fix"));
        assert_eq!(
            plan,
            Plan::Deploy(vec![
                Target { environment: "test".into(), rule: "main".into() },
                Target { environment: "live".into(), rule: "main".into() },
            ])
        );
        let release = super::plan(&rules, &push("refs/heads/release/2", "x"));
        assert_eq!(release, Plan::Deploy(vec![Target { environment: "live".into(), rule: "release/*".into() }]));
        assert_eq!(super::plan(&rules, &push("refs/heads/feature/x", "x")), Plan::Deploy(vec![]));
        assert_eq!(super::plan(&rules, &push("refs/tags/v1", "x")), Plan::Deploy(vec![]), "tags match no rule");
    }

    #[test]
    fn skip_phrases_and_deleted_branches_deploy_nothing() {
        let rules = [rule("main", "test")];
        for message in ["docs [skip deploy]", "[Deploy Skip] tidy", "x\n\n[SKIP DEPLOY]"] {
            let Plan::Skip(reason) = plan(&rules, &push("refs/heads/main", message)) else { panic!("{message}") };
            assert!(reason.contains("skip"), "{reason}");
        }
        assert!(matches!(plan(&rules, &push("refs/heads/main", "[skip ci]")), Plan::Deploy(t) if t.len() == 1));
        let mut deleted = push("refs/heads/main", "x");
        deleted.commit = "0".repeat(40);
        assert_eq!(plan(&rules, &deleted), Plan::Skip("the push deleted refs/heads/main".into()));
        let mut flagged = push("refs/heads/main", "x");
        flagged.deleted = true;
        assert!(matches!(plan(&rules, &flagged), Plan::Skip(_)));
    }

    #[test]
    fn only_waiting_push_deployments_are_superseded() {
        let [running, manual, old_push, older_push] = [1u128, 2, 3, 4].map(Uuid::from_u128);
        let pushed: BTreeSet<Uuid> = [running, old_push, older_push].into();
        assert_eq!(superseded(&[running, older_push, manual, old_push], &pushed), vec![older_push, old_push]);
        assert_eq!(superseded(&[running], &pushed), Vec::<Uuid>::new(), "the running one keeps its turn");
        assert_eq!(superseded(&[], &pushed), Vec::<Uuid>::new());
        assert_eq!(superseded_reason(running, &"ab".repeat(20)), format!("superseded by {running} (push of abababababab)"));
    }

    #[test]
    fn the_actor_names_the_provider_and_a_tidied_pusher() {
        assert_eq!(actor(WebhookProvider::Github, "octocat"), "webhook:github:octocat");
        assert_eq!(actor(WebhookProvider::Gitlab, " a:b\n"), "webhook:gitlab:ab");
        assert_eq!(actor(WebhookProvider::Generic, ""), "webhook:generic:unknown");
        assert_eq!(actor(WebhookProvider::Gitea, &"x".repeat(500)).len(), "webhook:gitea:".len() + 64);
    }
}
