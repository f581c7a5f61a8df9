//! Environments added to and removed from a project after it was created
//! (`slipway env add|remove`), pure: whether a name may be added
//! (`may_add`), and whether an environment may be removed (`may_remove`);
//! and whether a whole project may be removed (`may_remove_project`).
//!
//! A removal takes the environment down for good: its queued and running
//! deployments are cancelled, its serving release retired and its route
//! removed (the engine's `lifecycle`, as for a preview). So it is refused
//! while something else still counts on the environment: an auto-deploy
//! rule that deploys to it, a preview rule or a preview that inherits its
//! settings, a domain that routes to it. Each refusal names the command
//! that lifts it. Its protection and freeze windows are kept: adding the
//! name again does not make it unprotected.

use slipway_proto::config::is_dns_label;
use slipway_proto::event::PreviewTrigger;

use crate::project::Project;
use crate::rejection::Rejection;

/// The longest DNS label: the environment's host name label
/// `<project>-<env>` must fit in one.
pub const HOST_LABEL_MAX: usize = 63;

/// Why `project`'s environment `environment` could not be reached under
/// its host name `<project>-<env>.<router domain>`: the label is too long.
pub fn host_label_problem(project: &str, environment: &str) -> Option<String> {
    let n = project.len() + 1 + environment.len();
    (n > HOST_LABEL_MAX).then(|| {
        format!(
            "`{project}-{environment}` is {n} characters, and an environment's host name label `<project>-<env>` \
             can have at most {HOST_LABEL_MAX}: shorten the project or the environment name"
        )
    })
}

/// Whether `name` may be added to `p` as a new environment.
pub fn may_add(p: &Project, name: &str) -> Result<(), Rejection> {
    if !is_dns_label(name) {
        return Err(Rejection::invalid(format!("environment name `{name}` must be 1-63 lowercase letters, digits or '-'")));
    }
    if let Some(why) = host_label_problem(&p.name, name) {
        return Err(Rejection::invalid(why));
    }
    if p.environments.contains_key(name) {
        return Err(Rejection::conflict(format!("project `{}` has an environment `{name}` already", p.name)));
    }
    Ok(())
}

/// Whether environment `name` of `p` may be removed; `domains` are the
/// domains routed to it.
pub fn may_remove(p: &Project, name: &str, domains: &[String]) -> Result<(), Rejection> {
    let project = &p.name;
    if !p.environments.contains_key(name) {
        return Err(Rejection::not_found(format!("project `{project}` has no environment `{name}`")));
    }
    if let Some(rule) = p.auto_deploy.iter().find(|r| r.environment == name) {
        return Err(Rejection::conflict(format!(
            "the auto-deploy rule for `{}` deploys to {project} {name}; remove it first (slipway project auto-deploy {project} remove '{}')",
            rule.branch, rule.branch
        )));
    }
    if let Some(rule) = p.preview_rules.iter().find(|r| r.inherit == name) {
        let flag = match &rule.trigger {
            PreviewTrigger::PullRequests => "--pull-requests".to_string(),
            PreviewTrigger::Branches(glob) => format!("--branches '{glob}'"),
        };
        return Err(Rejection::conflict(format!(
            "the preview rule for {} inherits {project} {name}'s settings; remove it first (slipway project preview {project} remove {flag})",
            rule.trigger
        )));
    }
    if let Some((preview, _)) = p.previews.iter().find(|(_, v)| v.inherits.as_deref() == Some(name)) {
        return Err(Rejection::conflict(format!(
            "preview {preview} inherits {project} {name}'s settings; remove it first (slipway preview remove {project} {preview})"
        )));
    }
    if !domains.is_empty() {
        let routed: Vec<(String, String)> = domains.iter().map(|d| (d.clone(), name.to_string())).collect();
        return Err(domains_first(project, &routed));
    }
    Ok(())
}

/// The refusal while `domains` (domain, environment) still route to
/// `project`: every one named, with the commands that remove them (quoted:
/// a wildcard is a shell pattern).
fn domains_first(project: &str, domains: &[(String, String)]) -> Rejection {
    let named: Vec<String> = domains.iter().map(|(d, e)| format!("`{d}` ({e})")).collect();
    let commands: Vec<String> = domains.iter().map(|(d, e)| format!("slipway domain remove {project} {e} '{d}'")).collect();
    let (noun, verb, them) = if domains.len() == 1 { ("domain", "routes", "it") } else { ("domains", "route", "them") };
    Rejection::conflict(format!("{noun} {} {verb} to {project}; remove {them} first: {}", named.join(", "), commands.join("; ")))
}

/// Whether project `p` may be removed: not while `mirrors` (its mirrors
/// that still exist) build from its repository with its credentials, nor
/// while a domain routes to one of its environments (`domains`: domain and
/// environment).
pub fn may_remove_project(p: &Project, mirrors: &[String], domains: &[(String, String)]) -> Result<(), Rejection> {
    let project = &p.name;
    if let Some(mirror) = mirrors.first() {
        return Err(Rejection::conflict(format!(
            "project `{mirror}` mirrors `{project}` (it builds from its repository); remove it first (slipway project remove {mirror} --yes)"
        )));
    }
    if !domains.is_empty() {
        return Err(domains_first(project, domains));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use slipway_proto::event::{AutoDeploySet, EnvironmentAdded, EnvironmentRemoved, PreviewRuleSet, ProjectCreated};
    use slipway_proto::Event;

    fn shop() -> Project {
        let created = Event::ProjectCreated(ProjectCreated {
            name: "shop".into(),
            repository: "/r".into(),
            mirror_of: None,
            environments: vec!["test".into(), "live".into()],
            default_branch: "main".into(),
        });
        crate::project::fold([&created]).unwrap_or_else(|| panic!("no project"))
    }

    fn refused(r: Result<(), Rejection>) -> String {
        match r {
            Ok(()) => panic!("not refused"),
            Err(r) => r.message().to_string(),
        }
    }

    #[test]
    fn a_new_name_is_added_once_and_only_a_dns_label() {
        let mut p = shop();
        assert_eq!(may_add(&p, "staging"), Ok(()));
        assert!(refused(may_add(&p, "Staging!")).contains("1-63 lowercase letters"));
        assert!(refused(may_add(&p, "live")).contains("has an environment `live` already"));
        // `<project>-<env>` is one host name label.
        let longest = "e".repeat(HOST_LABEL_MAX - p.name.len() - 1);
        assert_eq!(may_add(&p, &longest), Ok(()));
        assert!(refused(may_add(&p, &format!("{longest}e"))).contains("at most 63"));
        let added = EnvironmentAdded { name: "staging".into(), inherits: None, preview: None, ttl_seconds: None, at: Utc::now() };
        p.apply(&Event::EnvironmentAdded(added));
        // A named environment, not a preview.
        assert!(p.environments.contains_key("staging") && !p.previews.contains_key("staging"));
        assert!(may_add(&p, "staging").is_err());
    }

    #[test]
    fn an_environment_something_counts_on_is_not_removed() {
        let mut p = shop();
        assert!(refused(may_remove(&p, "nosuch", &[])).contains("no environment `nosuch`"));
        assert_eq!(may_remove(&p, "test", &[]), Ok(()));
        let domains = ["shop.example".to_string()];
        assert!(refused(may_remove(&p, "test", &domains)).contains("slipway domain remove shop test 'shop.example'"));
        p.apply(&Event::AutoDeploySet(AutoDeploySet { branch: "main".into(), environment: "test".into(), poll_seconds: None }));
        assert!(refused(may_remove(&p, "test", &[])).contains("slipway project auto-deploy shop remove 'main'"));
        p.apply(&Event::PreviewRuleSet(PreviewRuleSet {
            trigger: PreviewTrigger::PullRequests,
            inherit: "live".into(),
            ttl_seconds: 3600,
        }));
        let inherited = refused(may_remove(&p, "live", &[]));
        assert!(
            inherited.contains("inherits shop live's settings") && inherited.contains("preview shop remove --pull-requests"),
            "{inherited}"
        );
        // Once removed, the name is free again.
        let removed =
            EnvironmentRemoved { name: "test".into(), reason: "r".into(), cancelled: vec![], retired: None, route_removed: false };
        p.apply(&Event::EnvironmentRemoved(removed));
        assert!(refused(may_remove(&p, "test", &[])).contains("no environment"));
        assert_eq!(may_add(&p, "test"), Ok(()));
    }

    #[test]
    fn a_project_a_mirror_or_a_domain_counts_on_is_not_removed() {
        let p = shop();
        assert_eq!(may_remove_project(&p, &[], &[]), Ok(()));
        let mirrored = refused(may_remove_project(&p, &["shop-eu".to_string()], &[]));
        assert!(mirrored.contains("`shop-eu` mirrors `shop`") && mirrored.contains("slipway project remove shop-eu --yes"), "{mirrored}");
        let routed = refused(may_remove_project(&p, &[], &[("shop.example".into(), "live".into())]));
        assert!(routed.contains("slipway domain remove shop live 'shop.example'"), "{routed}");
        // Every domain is named at once, a wildcard quoted against the shell.
        let two = [("*.shop.example".to_string(), "live".to_string()), ("shop.test".to_string(), "test".to_string())];
        assert_eq!(
            refused(may_remove_project(&p, &[], &two)),
            "domains `*.shop.example` (live), `shop.test` (test) route to shop; remove them first: \
             slipway domain remove shop live '*.shop.example'; slipway domain remove shop test 'shop.test'"
        );
    }
}
