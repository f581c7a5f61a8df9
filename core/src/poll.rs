//! Polling, the fallback for git hosts that cannot reach Slipway with a
//! webhook: an auto-deploy rule with `poll_seconds` makes the server list
//! the repository's branches that often, and a branch whose head is new
//! is recorded as a push (provider `poll`) with the same effects as a
//! webhook's: the rule's deployment, the skip phrase, superseding. The
//! decisions here are pure; the server's poller (`slipway_node::poll`)
//! lists the branches and records the pushes.
//!
//! A polled push's delivery id is `<commit>:<branch>`, so a head is
//! recorded once however many servers poll and however often they restart;
//! the first poll after a rule is set deploys the branch's current head.

use slipway_proto::event::WebhookProvider;

use crate::project::{delivery_key, AutoDeployRule, Project};
use crate::push::glob_matches;

/// The delivery id a polled head is recorded under.
pub fn delivery(branch: &str, commit: &str) -> String {
    format!("{commit}:{branch}")
}

/// The branches (with their heads) a poll should record as pushes: those a
/// poll rule matches whose head the project has not recorded yet.
pub fn new_heads(project: &Project, branches: &[(String, String)]) -> Vec<(String, String)> {
    let polled: Vec<&AutoDeployRule> = project.auto_deploy.iter().filter(|r| r.poll_seconds.is_some()).collect();
    branches
        .iter()
        .filter(|(branch, _)| polled.iter().any(|r| glob_matches(&r.branch, branch)))
        .filter(|(branch, commit)| !project.deliveries.contains(&delivery_key(WebhookProvider::Poll, &delivery(branch, commit))))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(rules: &[(&str, Option<u64>)], delivered: &[&str]) -> Project {
        let mut p = crate::project::fold(&[slipway_proto::Event::ProjectCreated(slipway_proto::event::ProjectCreated {
            name: "p".into(),
            repository: "https://git.example.com/p.git".into(),
            mirror_of: None,
            environments: vec!["test".into()],
            default_branch: "main".into(),
        })])
        .unwrap_or_else(|| unreachable!("a created project"));
        p.auto_deploy = rules
            .iter()
            .map(|(b, poll)| AutoDeployRule { branch: b.to_string(), environment: "test".into(), poll_seconds: *poll })
            .collect();
        p.deliveries = delivered.iter().map(|d| format!("poll:{d}")).collect();
        p
    }

    #[test]
    fn new_heads_are_matching_branches_not_recorded_yet() {
        let p = project(&[("main", Some(60)), ("release/*", None)], &["c1:main"]);
        let branches = vec![
            ("main".to_string(), "c1".to_string()),
            ("release/1".to_string(), "c2".to_string()),
            ("feature".to_string(), "c3".to_string()),
        ];
        assert_eq!(new_heads(&p, &branches), Vec::<(String, String)>::new(), "main's head was recorded; release/* is not polled");
        let moved = vec![("main".to_string(), "c4".to_string())];
        assert_eq!(new_heads(&p, &moved), moved);
    }
}
