//! How each git host signs and shapes a push webhook, read without I/O:
//! which header carries the signature (an HMAC-SHA256 of the body under the
//! project's webhook secret, or for GitLab the secret itself), which names
//! the delivery and the event, and the push and pull request payloads
//! parsed strictly into typed structs (`push::Push`, `preview::PullRequest`). Signatures are compared in constant time.
//! A payload comes from the network, so nothing here panics: every failure
//! is a value naming the header or field at fault.

use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::Sha256;
use slipway_proto::event::WebhookProvider;
use subtle::ConstantTimeEq;

use crate::preview::{PrAction, PullRequest};
use crate::push::Push;

/// The largest body taken (1 MiB); a larger one is refused with 413.
pub const MAX_BODY: usize = 1024 * 1024;

/// The longest delivery id taken.
const MAX_DELIVERY: usize = 128;

/// The HMAC-SHA256 of `body` under `secret`, lowercase hex: what a sender
/// puts in the signature header (after `sha256=` for GitHub and generic).
pub fn sign(secret: &str, body: &[u8]) -> String {
    hex::encode(mac(secret, body).finalize().into_bytes())
}

fn mac(secret: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this never fails.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| <Hmac<Sha256> as Mac>::new_from_slice(b"slipway").expect("a fixed key is valid"));
    mac.update(body);
    mac
}

/// The signature a request presents: which header, and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    pub header: &'static str,
    value: String,
}

/// The headers that may carry each provider's signature, in order of preference.
pub fn signature_headers(provider: WebhookProvider) -> &'static [&'static str] {
    match provider {
        WebhookProvider::Github => &["X-Hub-Signature-256"],
        WebhookProvider::Gitlab => &["X-Gitlab-Token"],
        WebhookProvider::Gitea => &["X-Gitea-Signature", "X-Forgejo-Signature"],
        WebhookProvider::Generic => &["X-Slipway-Signature"],
        WebhookProvider::Poll => &[],
    }
}

/// The signature the request presents, or the message for its absence.
pub fn presented(provider: WebhookProvider, headers: &HeaderMap) -> Result<Presented, String> {
    let names = signature_headers(provider);
    names.iter().find_map(|name| header(headers, name).map(|value| Presented { header: name, value: value.to_owned() })).ok_or_else(|| {
        let how = match provider {
            WebhookProvider::Gitlab => "the project's webhook secret as the GitLab webhook's secret token",
            WebhookProvider::Gitea => "the hex HMAC-SHA256 of the body under the project's webhook secret",
            _ => "`sha256=` and the hex HMAC-SHA256 of the body under the project's webhook secret",
        };
        format!("no `{}` header: it must carry {how}", names.join("` or `"))
    })
}

/// Does the presented signature verify `body` under `secret`? Constant
/// time in the secret and the signature (a length mismatch is visible).
pub fn verify(provider: WebhookProvider, presented: &Presented, body: &[u8], secret: &str) -> bool {
    let value = presented.value.trim();
    let hex_part = match provider {
        WebhookProvider::Gitlab => return bool::from(value.as_bytes().ct_eq(secret.as_bytes())),
        WebhookProvider::Gitea => value.strip_prefix("sha256=").unwrap_or(value),
        WebhookProvider::Github | WebhookProvider::Generic => match value.strip_prefix("sha256=") {
            Some(h) => h,
            None => return false,
        },
        WebhookProvider::Poll => return false,
    };
    let Ok(signature) = hex::decode(hex_part) else { return false };
    mac(secret, body).verify_slice(&signature).is_ok()
}

/// What kind of event a request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    Push,
    /// A pull request (GitLab: merge request) event: previews.
    PullRequest,
    /// Anything else (`ping`, `Tag Push Hook`, `issues`...): acknowledged, never deployed.
    Other(String),
}

/// The event a request announces. The generic form is a push unless its
/// optional `X-Slipway-Event` says otherwise.
pub fn event_kind(provider: WebhookProvider, headers: &HeaderMap) -> Result<EventKind, String> {
    let (names, push): (&[&str], &str) = match provider {
        WebhookProvider::Github => (&["X-GitHub-Event"], "push"),
        WebhookProvider::Gitlab => (&["X-Gitlab-Event"], "Push Hook"),
        WebhookProvider::Gitea => (&["X-Gitea-Event", "X-Forgejo-Event"], "push"),
        WebhookProvider::Generic | WebhookProvider::Poll => (&["X-Slipway-Event"], "push"),
    };
    let pull_request: &[&str] = match provider {
        WebhookProvider::Github => &["pull_request"],
        WebhookProvider::Gitlab => &["Merge Request Hook"],
        WebhookProvider::Gitea => &["pull_request", "pull_request_sync"],
        WebhookProvider::Generic | WebhookProvider::Poll => &[],
    };
    let value = names.iter().find_map(|n| header(headers, n));
    match value {
        None if provider == WebhookProvider::Generic => Ok(EventKind::Push),
        None => Err(format!("no `{}` header: which event is this?", names.join("` or `"))),
        Some(v) if v.trim() == push => Ok(EventKind::Push),
        Some(v) if pull_request.contains(&v.trim()) => Ok(EventKind::PullRequest),
        Some(v) => Ok(EventKind::Other(printable(v, 64))),
    }
}

/// The provider's id for this delivery, the same on every redelivery.
pub fn delivery(provider: WebhookProvider, headers: &HeaderMap) -> Result<String, String> {
    let names: &[&str] = match provider {
        WebhookProvider::Github => &["X-GitHub-Delivery"],
        // Idempotency-Key stays the same across GitLab's retries; older
        // GitLab versions send only the event UUID.
        WebhookProvider::Gitlab => &["Idempotency-Key", "X-Gitlab-Event-UUID"],
        WebhookProvider::Gitea => &["X-Gitea-Delivery", "X-Forgejo-Delivery"],
        WebhookProvider::Generic => &["X-Slipway-Delivery"],
        WebhookProvider::Poll => &[],
    };
    let Some(value) = names.iter().find_map(|n| header(headers, n)) else {
        return Err(format!("no `{}` header: a delivery id is needed to acknowledge redeliveries once", names.join("` or `")));
    };
    let value = value.trim();
    if value.is_empty() || value.len() > MAX_DELIVERY || !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)) {
        return Err(format!(
            "the delivery id must be 1-{MAX_DELIVERY} letters, digits, '-', '_', '.' or ':' (got {} characters)",
            value.len()
        ));
    }
    Ok(value.to_owned())
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `text` without control characters, at most `max` characters.
fn printable(text: &str, max: usize) -> String {
    text.chars().filter(|c| !c.is_control()).take(max).collect()
}

// ---- Payloads: only the fields a push needs; the rest is ignored, but
// ---- every field read must be there with its type.

#[derive(Deserialize)]
struct Message {
    message: String,
}

#[derive(Deserialize)]
struct CommitWithId {
    id: String,
    message: String,
}

/// GitHub's `push` event.
#[derive(Deserialize)]
struct GithubPush {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    deleted: bool,
    pusher: GithubPusher,
    head_commit: Option<Message>,
}

#[derive(Deserialize)]
struct GithubPusher {
    name: String,
}

/// GitLab's `Push Hook`.
#[derive(Deserialize)]
struct GitlabPush {
    object_kind: String,
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    user_username: Option<String>,
    #[serde(default)]
    user_name: Option<String>,
    #[serde(default)]
    commits: Vec<CommitWithId>,
}

/// Gitea's and Forgejo's `push` event.
#[derive(Deserialize)]
struct GiteaPush {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    pusher: GiteaUser,
    #[serde(default)]
    head_commit: Option<Message>,
    #[serde(default)]
    commits: Vec<CommitWithId>,
}

#[derive(Deserialize)]
struct GiteaUser {
    #[serde(default)]
    login: String,
    #[serde(default)]
    username: String,
}

/// Slipway's generic form, for anything that can sign a small JSON body:
/// `{"ref": "refs/heads/main", "after": "<sha>", "pusher": "ci",
/// "head_commit_message": "..."}` (`ref` may be a bare branch name;
/// `deleted` is optional). Unknown fields are refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GenericPush {
    #[serde(rename = "ref")]
    git_ref: String,
    after: String,
    #[serde(default)]
    pusher: String,
    #[serde(default)]
    head_commit_message: Option<String>,
    #[serde(default)]
    deleted: bool,
}

/// The message of the commit `after` in `commits`, else of the last one.
fn head_message(commits: Vec<CommitWithId>, after: &str) -> Option<String> {
    let mut commits = commits;
    let at = commits.iter().position(|c| c.id == after).unwrap_or(commits.len().saturating_sub(1));
    (at < commits.len()).then(|| commits.swap_remove(at).message)
}

/// Reads a push payload of `provider`, naming the field at fault.
pub fn parse_push(provider: WebhookProvider, body: &[u8]) -> Result<Push, String> {
    let push = match provider {
        WebhookProvider::Github => {
            let p: GithubPush = parse(body)?;
            Push {
                git_ref: p.git_ref,
                commit: p.after,
                pusher: p.pusher.name,
                head_message: p.head_commit.map(|c| c.message),
                deleted: p.deleted,
            }
        }
        WebhookProvider::Gitlab => {
            let p: GitlabPush = parse(body)?;
            if p.object_kind != "push" {
                return Err(format!("`object_kind` is `{}`, not `push`", printable(&p.object_kind, 32)));
            }
            let pusher = p.user_username.filter(|u| !u.is_empty()).or(p.user_name).unwrap_or_default();
            let head_message = head_message(p.commits, &p.after);
            Push { git_ref: p.git_ref, commit: p.after, pusher, head_message, deleted: false }
        }
        WebhookProvider::Gitea => {
            let p: GiteaPush = parse(body)?;
            let pusher = if p.pusher.login.is_empty() { p.pusher.username } else { p.pusher.login };
            let head_message = match p.head_commit {
                Some(c) => Some(c.message),
                None => head_message(p.commits, &p.after),
            };
            Push { git_ref: p.git_ref, commit: p.after, pusher, head_message, deleted: false }
        }
        WebhookProvider::Generic => {
            let p: GenericPush = parse(body)?;
            let git_ref = if p.git_ref.starts_with("refs/") { p.git_ref } else { format!("refs/heads/{}", p.git_ref) };
            Push { git_ref, commit: p.after, pusher: p.pusher, head_message: p.head_commit_message, deleted: p.deleted }
        }
        WebhookProvider::Poll => return Err("a polled push has no payload".into()),
    };
    checked(push)
}

/// What a poll of the repository saw as a push: `branch` now at `commit`,
/// whose message is `head_message`; checked as a webhook's push is.
pub fn polled_push(branch: &str, commit: &str, head_message: Option<String>) -> Result<Push, String> {
    let push = Push { git_ref: format!("refs/heads/{branch}"), commit: commit.into(), pusher: "poll".into(), head_message, deleted: false };
    checked(push)
}

// ---- Pull requests (GitLab: merge requests) ----

#[derive(Deserialize)]
struct GithubPullRequestEvent {
    action: String,
    number: u64,
    pull_request: GithubPullRequest,
    sender: Login,
}

#[derive(Deserialize)]
struct GithubPullRequest {
    head: GithubHead,
    base: GithubBase,
}

#[derive(Deserialize)]
struct GithubHead {
    sha: String,
    #[serde(rename = "ref")]
    git_ref: String,
    /// `null` when the fork was deleted.
    repo: Option<GithubRepo>,
}

#[derive(Deserialize)]
struct GithubBase {
    repo: GithubRepo,
}

#[derive(Deserialize)]
struct GithubRepo {
    full_name: String,
    #[serde(default)]
    fork: bool,
}

#[derive(Deserialize)]
struct Login {
    #[serde(default)]
    login: String,
    #[serde(default)]
    username: String,
}

/// GitLab's `Merge Request Hook`.
#[derive(Deserialize)]
struct GitlabMergeRequest {
    object_kind: String,
    user: GitlabUser,
    object_attributes: GitlabAttributes,
}

#[derive(Deserialize)]
struct GitlabUser {
    username: String,
}

#[derive(Deserialize)]
struct GitlabAttributes {
    iid: u64,
    #[serde(default)]
    action: Option<String>,
    source_branch: String,
    source_project_id: u64,
    target_project_id: u64,
    last_commit: CommitId,
}

#[derive(Deserialize)]
struct CommitId {
    id: String,
}

/// Gitea's and Forgejo's `pull_request` event.
#[derive(Deserialize)]
struct GiteaPullRequestEvent {
    action: String,
    number: u64,
    pull_request: GiteaPullRequest,
    sender: Login,
}

#[derive(Deserialize)]
struct GiteaPullRequest {
    head: GiteaBranch,
    base: GiteaBranch,
}

#[derive(Deserialize)]
struct GiteaBranch {
    sha: String,
    #[serde(rename = "ref")]
    git_ref: String,
    repo_id: u64,
}

/// The action a provider's word names.
fn pr_action(provider: WebhookProvider, action: &str) -> PrAction {
    match (provider, action) {
        (WebhookProvider::Gitlab, "open" | "reopen") => PrAction::Open,
        (WebhookProvider::Gitlab, "update") => PrAction::Update,
        (WebhookProvider::Gitlab, "close" | "merge") => PrAction::Close,
        (WebhookProvider::Gitlab, _) => PrAction::Other,
        (_, "opened" | "reopened") => PrAction::Open,
        (_, "synchronize" | "synchronized") => PrAction::Update,
        (_, "closed") => PrAction::Close,
        _ => PrAction::Other,
    }
}

/// Reads a pull request (merge request) payload of `provider`, naming the
/// field at fault. Its head is a fork when it lives in another repository
/// than the base (GitHub: `head.repo.fork`, another `full_name`, or a
/// deleted head repository; GitLab and Gitea: another project id).
pub fn parse_pull_request(provider: WebhookProvider, body: &[u8]) -> Result<PullRequest, String> {
    let (action, number, head_commit, head_branch, fork, sender) = match provider {
        WebhookProvider::Github => {
            let e: GithubPullRequestEvent = parse(body)?;
            let head = e.pull_request.head;
            let fork = head.repo.as_ref().is_none_or(|r| r.fork || r.full_name != e.pull_request.base.repo.full_name);
            (e.action, e.number, head.sha, head.git_ref, fork, e.sender.login)
        }
        WebhookProvider::Gitlab => {
            let e: GitlabMergeRequest = parse(body)?;
            if e.object_kind != "merge_request" {
                return Err(format!("`object_kind` is `{}`, not `merge_request`", printable(&e.object_kind, 32)));
            }
            let a = e.object_attributes;
            let fork = a.source_project_id != a.target_project_id;
            (a.action.unwrap_or_default(), a.iid, a.last_commit.id, a.source_branch, fork, e.user.username)
        }
        WebhookProvider::Gitea => {
            let e: GiteaPullRequestEvent = parse(body)?;
            let (head, base) = (e.pull_request.head, e.pull_request.base);
            let sender = if e.sender.login.is_empty() { e.sender.username } else { e.sender.login };
            (e.action, e.number, head.sha, head.git_ref, head.repo_id != base.repo_id, sender)
        }
        WebhookProvider::Generic | WebhookProvider::Poll => return Err(format!("`{provider}` carries pushes only")),
    };
    if !is_commit(&head_commit) {
        return Err(format!("the head commit `{}` is not a commit id (40 or 64 hex digits)", printable(&head_commit, 80)));
    }
    if number == 0 {
        return Err("the pull request number must be 1 or more".into());
    }
    if head_branch.is_empty() || head_branch.len() > 255 || head_branch.chars().any(|c| c.is_control()) {
        return Err(format!("the head branch `{}` is not a branch name", printable(&head_branch, 64)));
    }
    Ok(PullRequest {
        action: pr_action(provider, &action),
        raw_action: printable(&action, 32),
        number,
        head_commit: head_commit.to_ascii_lowercase(),
        head_branch,
        fork,
        sender: printable(&sender, 255),
    })
}

fn is_commit(c: &str) -> bool {
    (c.len() == 40 || c.len() == 64) && c.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The ref and commit as recorded: a ref of printable characters, a commit
/// of 40 or 64 hex digits (lowercased).
fn checked(mut push: Push) -> Result<Push, String> {
    let r = &push.git_ref;
    if r.is_empty() || r.len() > 255 || r.chars().any(|c| c.is_control() || c.is_whitespace()) || r.starts_with('-') {
        return Err(format!("`ref` `{}` is not a git ref", printable(r, 64)));
    }
    let c = &push.commit;
    if !is_commit(c) {
        return Err(format!("`after` `{}` is not a commit id (40 or 64 hex digits)", printable(c, 80)));
    }
    push.commit = push.commit.to_ascii_lowercase();
    push.pusher = printable(&push.pusher, 255);
    Ok(push)
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path == "?" {
            format!("invalid push payload: {inner}")
        } else {
            format!("invalid push payload at `{path}`: {inner}")
        }
    })?;
    de.end().map_err(|e| format!("invalid push payload: {e}"))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const SECRET: &str = "It's a Secret to Everybody";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, HeaderValue::from_str(value).expect("a valid header value"));
        }
        h
    }

    #[test]
    fn github_s_documented_example_signature_verifies() {
        // From GitHub's "Validating webhook deliveries".
        let body = b"Hello, World!";
        let expected = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign(SECRET, body), expected);
        let h = headers(&[("X-Hub-Signature-256", &format!("sha256={expected}"))]);
        let p = presented(WebhookProvider::Github, &h).expect("present");
        assert!(verify(WebhookProvider::Github, &p, body, SECRET));
        assert!(!verify(WebhookProvider::Github, &p, b"Hello, World?", SECRET), "another body");
        assert!(!verify(WebhookProvider::Github, &p, body, "another secret"));
    }

    #[test]
    fn malformed_or_missing_signatures_never_verify() {
        let body = b"{}";
        let good = sign(SECRET, body);
        for (provider, header, value) in [
            (WebhookProvider::Github, "X-Hub-Signature-256", good.clone()), // no sha256= prefix
            (WebhookProvider::Github, "X-Hub-Signature-256", "sha256=zz".to_string()),
            (WebhookProvider::Github, "X-Hub-Signature-256", format!("sha256={}", &good[..10])),
            (WebhookProvider::Generic, "X-Slipway-Signature", "sha1=00".to_string()),
            (WebhookProvider::Gitea, "X-Gitea-Signature", "".to_string()),
            (WebhookProvider::Gitlab, "X-Gitlab-Token", format!("{SECRET}x")),
            (WebhookProvider::Gitlab, "X-Gitlab-Token", SECRET[1..].to_string()),
        ] {
            let p = presented(provider, &headers(&[(header, &value)])).expect("present");
            assert!(!verify(provider, &p, body, SECRET), "{provider} {value}");
        }
        for provider in WebhookProvider::ALL {
            let e = presented(provider, &HeaderMap::new()).unwrap_err();
            assert!(e.contains(signature_headers(provider)[0]), "{e}");
        }
    }

    #[test]
    fn each_provider_s_own_form_verifies() {
        let body = br#"{"ref":"refs/heads/main"}"#;
        let mac = sign(SECRET, body);
        for (provider, header, value) in [
            (WebhookProvider::Github, "X-Hub-Signature-256", format!("sha256={mac}")),
            (WebhookProvider::Generic, "X-Slipway-Signature", format!("sha256={mac}")),
            (WebhookProvider::Gitea, "X-Gitea-Signature", mac.clone()),
            (WebhookProvider::Gitea, "X-Forgejo-Signature", mac.to_uppercase()),
            (WebhookProvider::Gitlab, "X-Gitlab-Token", SECRET.to_string()),
        ] {
            let p = presented(provider, &headers(&[(header, &value)])).expect("present");
            assert_eq!(p.header, header);
            assert!(verify(provider, &p, body, SECRET), "{provider} via {header}");
        }
    }

    #[test]
    fn events_and_deliveries_by_provider() {
        let gh = headers(&[("X-GitHub-Event", "ping"), ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")]);
        assert_eq!(event_kind(WebhookProvider::Github, &gh), Ok(EventKind::Other("ping".into())));
        assert_eq!(delivery(WebhookProvider::Github, &gh).as_deref(), Ok("72d3162e-cc78-11e3-81ab-4c9367dc0958"));
        let gl = headers(&[("X-Gitlab-Event", "Push Hook"), ("X-Gitlab-Event-UUID", "u1"), ("Idempotency-Key", "k1")]);
        assert_eq!(event_kind(WebhookProvider::Gitlab, &gl), Ok(EventKind::Push));
        assert_eq!(delivery(WebhookProvider::Gitlab, &gl).as_deref(), Ok("k1"), "the key stays the same across retries");
        let fj = headers(&[("X-Forgejo-Event", "push"), ("X-Forgejo-Delivery", "d-1")]);
        assert_eq!(event_kind(WebhookProvider::Gitea, &fj), Ok(EventKind::Push));
        assert_eq!(delivery(WebhookProvider::Gitea, &fj).as_deref(), Ok("d-1"));
        assert_eq!(event_kind(WebhookProvider::Generic, &HeaderMap::new()), Ok(EventKind::Push));
        assert!(event_kind(WebhookProvider::Github, &HeaderMap::new()).unwrap_err().contains("X-GitHub-Event"));
        assert!(delivery(WebhookProvider::Generic, &HeaderMap::new()).unwrap_err().contains("X-Slipway-Delivery"));
        let long = "a".repeat(129);
        assert!(delivery(WebhookProvider::Generic, &headers(&[("X-Slipway-Delivery", &long)])).is_err());
        assert!(delivery(WebhookProvider::Generic, &headers(&[("X-Slipway-Delivery", "a/b")])).is_err());
    }

    #[test]
    fn payloads_are_read_strictly_naming_the_field() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let gh = format!(r#"{{"ref":"refs/heads/main","after":"{sha}","pusher":{{"name":"octo"}},"head_commit":{{"message":"m"}},"x":1}}"#);
        let p = parse_push(WebhookProvider::Github, gh.as_bytes()).expect("GitHub push");
        assert_eq!((p.branch(), p.commit.as_str(), p.pusher.as_str(), p.head_message.as_deref()), (Some("main"), sha, "octo", Some("m")));
        let missing = parse_push(WebhookProvider::Github, br#"{"ref":"refs/heads/main","after":"x"}"#).unwrap_err();
        assert!(missing.contains("pusher"), "{missing}");
        let wrong_type = parse_push(WebhookProvider::Github, br#"{"ref":1}"#).unwrap_err();
        assert!(wrong_type.contains("`ref`"), "{wrong_type}");
        let bad_sha = format!(r#"{{"ref":"main","after":"{}","pusher":"ci"}}"#, "g".repeat(40));
        assert!(parse_push(WebhookProvider::Generic, bad_sha.as_bytes()).unwrap_err().contains("`after`"));
        let unknown = format!(r#"{{"ref":"main","after":"{sha}","bogus":1}}"#);
        assert!(parse_push(WebhookProvider::Generic, unknown.as_bytes()).unwrap_err().contains("bogus"));
        let generic = format!(r#"{{"ref":"release/1","after":"{}","pusher":"ci"}}"#, sha.to_uppercase());
        let p = parse_push(WebhookProvider::Generic, generic.as_bytes()).expect("generic");
        assert_eq!((p.git_ref.as_str(), p.commit.as_str()), ("refs/heads/release/1", sha));
        for junk in [&b"not json"[..], b"", b"[]", b"{\"ref\":\"main\"} trailing", &[0xff, 0xfe]] {
            for provider in WebhookProvider::ALL {
                assert!(parse_push(provider, junk).is_err(), "{provider}");
            }
        }
    }

    #[test]
    fn pull_requests_of_each_provider_name_their_action_head_and_fork() {
        let sha = "ab".repeat(20);
        let gh = |action: &str, head_repo: &str| {
            format!(
                r#"{{"action":"{action}","number":42,"pull_request":{{"head":{{"sha":"{sha}","ref":"feature/x","repo":{head_repo}}},
                "base":{{"ref":"main","repo":{{"full_name":"octo/app","fork":false}}}}}},"sender":{{"login":"octocat"}}}}"#
            )
        };
        let same = r#"{"full_name":"octo/app","fork":false}"#;
        let p = parse_pull_request(WebhookProvider::Github, gh("opened", same).as_bytes()).expect("GitHub pull request");
        assert_eq!(
            (p.action, p.number, p.head_commit.as_str(), p.fork, p.sender.as_str()),
            (PrAction::Open, 42, sha.as_str(), false, "octocat")
        );
        let fork = r#"{"full_name":"mallory/app","fork":true}"#;
        assert!(parse_pull_request(WebhookProvider::Github, gh("synchronize", fork).as_bytes()).expect("fork").fork);
        let deleted = parse_pull_request(WebhookProvider::Github, gh("closed", "null").as_bytes()).expect("deleted fork");
        assert_eq!((deleted.action, deleted.fork), (PrAction::Close, true));
        assert_eq!(parse_pull_request(WebhookProvider::Github, gh("labeled", same).as_bytes()).map(|p| p.action), Ok(PrAction::Other));
        let gl = format!(
            r#"{{"object_kind":"merge_request","user":{{"username":"jo"}},"object_attributes":{{"iid":7,"action":"merge",
            "source_branch":"fix","source_project_id":2,"target_project_id":1,"last_commit":{{"id":"{sha}"}}}}}}"#
        );
        let p = parse_pull_request(WebhookProvider::Gitlab, gl.as_bytes()).expect("GitLab merge request");
        assert_eq!((p.action, p.number, p.fork, p.sender.as_str()), (PrAction::Close, 7, true, "jo"));
        let gt = format!(
            r#"{{"action":"synchronized","number":3,"pull_request":{{"head":{{"sha":"{sha}","ref":"f","repo_id":1}},
            "base":{{"sha":"{sha}","ref":"main","repo_id":1}}}},"sender":{{"login":"gi"}}}}"#
        );
        let p = parse_pull_request(WebhookProvider::Gitea, gt.as_bytes()).expect("Gitea pull request");
        assert_eq!((p.action, p.fork), (PrAction::Update, false));
        let bad_sha = gh("opened", same).replace(&sha, "nope");
        assert!(parse_pull_request(WebhookProvider::Github, bad_sha.as_bytes()).unwrap_err().contains("head commit"));
        let missing = parse_pull_request(WebhookProvider::Github, br#"{"action":"opened","number":1}"#).unwrap_err();
        assert!(missing.contains("pull_request"), "{missing}");
        for junk in [&b"[]"[..], b"", b"{\"number\":-1}", &[0xff]] {
            for provider in WebhookProvider::ALL {
                assert!(parse_pull_request(provider, junk).is_err(), "{provider}");
            }
        }
        let h = headers(&[("X-GitHub-Event", "pull_request")]);
        assert_eq!(event_kind(WebhookProvider::Github, &h), Ok(EventKind::PullRequest));
        let h = headers(&[("X-Gitlab-Event", "Merge Request Hook")]);
        assert_eq!(event_kind(WebhookProvider::Gitlab, &h), Ok(EventKind::PullRequest));
    }

    #[test]
    fn gitlab_and_gitea_take_the_head_commit_from_the_commits() {
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        let gl = format!(
            r#"{{"object_kind":"push","ref":"refs/heads/main","after":"{b}","user_name":"Jo","user_username":"jo",
               "commits":[{{"id":"{b}","message":"new [skip deploy]"}},{{"id":"{a}","message":"old"}}]}}"#
        );
        let p = parse_push(WebhookProvider::Gitlab, gl.as_bytes()).expect("GitLab push");
        assert_eq!((p.pusher.as_str(), p.head_message.as_deref()), ("jo", Some("new [skip deploy]")));
        let tag = gl.replace("\"push\"", "\"tag_push\"");
        assert!(parse_push(WebhookProvider::Gitlab, tag.as_bytes()).unwrap_err().contains("object_kind"));
        let gt = format!(r#"{{"ref":"refs/heads/main","after":"{a}","pusher":{{"login":"gi"}},"commits":[{{"id":"{a}","message":"m"}}]}}"#);
        let p = parse_push(WebhookProvider::Gitea, gt.as_bytes()).expect("Gitea push");
        assert_eq!((p.pusher.as_str(), p.head_message.as_deref()), ("gi", Some("m")));
    }
}
