//! Deploying from repositories reached over the network, against real git
//! servers on loopback (see `slipway_tests::git_servers`):
//! - HTTPS with a token and a private CA: the deployment succeeds, and the
//!   token appears nowhere but the value table (events, outbox, every other
//!   table, logs, checkouts and mirrors on disk);
//! - a wrong token, no token, an untrusted certificate, an unknown host, a
//!   closed port and a missing ref each fail with a reason that names the
//!   repository, the ref and what to do;
//! - SSH with a deploy key: the host key is trusted on first use and
//!   recorded on the project; after the server's key changes, the next
//!   deployment is refused at the services check;
//! - an encrypted deploy key opens with its passphrase, and without it (or
//!   with a wrong one) the fetch fails saying so;
//! - the worker's mirror: a second fetch brings only the new objects, and
//!   many shallow fetches' packs are folded into one;
//! - an HTTPS fetch sends its request bodies only once the server answered
//!   the headers (`Expect: 100-continue`), and a server that refuses that
//!   header fails it with a reason naming the setting that turns it off.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::collections::BTreeMap;
use std::path::Path;

use slipway_engine::requests::{self, NewProject};
use slipway_engine::source::SourceChange;
use slipway_engine::Status;
use slipway_proto::command::DeploymentContext;
use slipway_proto::event::project_stream;
use slipway_proto::{Event, Step};
use slipway_tests::git_servers::{publish, HttpsGit, SshGit};
use slipway_tests::*;
use slipway_workers::steps::git::{self, SourceError};
use slipway_workers::steps::git_remote::{self, source_key, Access};
use slipway_workers::steps::Settings;
use uuid::Uuid;

async fn create_with_source(h: &Harness, repository: &str, source: BTreeMap<&str, String>, known_hosts: Option<Vec<String>>) {
    let new = NewProject {
        name: h.project.clone(),
        repository: repository.into(),
        default_branch: "main".into(),
        environments: vec!["test".into(), "live".into()],
        mirror_of: None,
    };
    let change =
        SourceChange { set: source.into_iter().map(|(k, v)| (k.to_string(), v)).collect(), known_hosts, ..SourceChange::default() };
    requests::create_project_with_source(&*h.store, "test", new, change).await.unwrap().unwrap();
}

/// Every row of every table of the harness's schema but the value table, as text.
async fn rows_containing(h: &Harness, needle: &str) -> Vec<String> {
    let schema = h.schema().unwrap().to_string();
    let pool = sqlx::PgPool::connect(&pg_url()).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar("SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1")
        .bind(&schema)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(tables.contains(&"events".to_string()), "{tables:?}");
    let mut hits = Vec::new();
    for table in tables.iter().filter(|t| *t != "setting_values") {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT t::text FROM \"{schema}\".\"{table}\" t")).fetch_all(&pool).await.unwrap();
        hits.extend(rows.into_iter().filter(|r| r.contains(needle)).map(|r| format!("{table}: {r}")));
    }
    hits
}

async fn project_events(h: &Harness) -> Vec<Event> {
    let recorded = h.store.read_stream(&project_stream(&h.project), 1).await.unwrap();
    recorded.iter().map(|r| r.envelope.decode().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn https_with_a_token_and_a_private_ca_deploys_and_the_token_stays_secret() {
    require_docker();
    let token = format!("tok-{}", Uuid::now_v7().simple());
    let server = HttpsGit::start("deployer", &token);
    let (bare, url) = server.repository("app.git");
    let app = AppRepo::new();
    app.commit(&busybox_app("over https", "[web]\nport = 80\n", ""), "v1");
    publish(&app.path(), &bare);

    let h = Harness::start(Backends::PostgresRabbit).await;
    let source = BTreeMap::from([("username", "deployer".to_string()), ("token", token.clone()), ("ca_cert", server.ca_pem.clone())]);
    create_with_source(&h, &url, source, None).await;
    let d = h.deploy("test", "main").await;
    assert_eq!(d.status, Status::Succeeded, "{:?}", h.events(d.id).await);
    assert_eq!(h.routed_page("test").await.map(|(_, body)| body.trim().to_string()), Ok("over https".to_string()));

    // The token is in the value table only: not in any other table, not
    // in a log, a checkout or the mirror on disk.
    assert_eq!(rows_containing(&h, &token).await, Vec::<String>::new());
    assert_eq!(files_containing(h.data.path(), &token), Vec::<String>::new());
    let events = project_events(&h).await;
    let Some(Event::SourceAccessChanged(changed)) = events.get(1) else { panic!("{events:?}") };
    assert_eq!(changed.set.keys().collect::<Vec<_>>(), ["ca_cert", "token", "username"]);
    assert!(changed.set.values().all(|f| f.starts_with("hmac-sha256:")), "{changed:?}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_token_fails_the_services_check_clearly_and_unechoed() {
    require_docker();
    let server = HttpsGit::start("deployer", "the-right-token");
    let (bare, url) = server.repository("app.git");
    let app = AppRepo::new();
    app.commit(&busybox_app("v1", "[web]\nport = 80\n", ""), "v1");
    publish(&app.path(), &bare);

    let h = Harness::start(Backends::PostgresRabbit).await;
    let wrong = format!("wrong-{}", Uuid::now_v7().simple());
    let source = BTreeMap::from([("username", "deployer".to_string()), ("token", wrong.clone()), ("ca_cert", server.ca_pem.clone())]);
    create_with_source(&h, &url, source, None).await;
    let d = h.deploy("test", "main").await;
    let (step, reason) = failure(&d);
    assert_eq!(step, Step::CheckServices);
    assert!(reason.contains("refused the credentials") && reason.contains(&url) && reason.contains("`main`"), "{reason}");
    assert!(reason.contains("slipway project source --token-file"), "says what to do: {reason}");
    assert_eq!(rows_containing(&h, &wrong).await, Vec::<String>::new());
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ssh_with_a_deploy_key_trusts_the_host_key_on_first_use_and_refuses_a_changed_one() {
    require_docker();
    let server = SshGit::start();
    let (bare, url) = server.repository("app.git");
    let app = AppRepo::new();
    app.commit(&busybox_app("over ssh", "[web]\nport = 80\n", ""), "v1");
    publish(&app.path(), &bare);

    let h = Harness::start(Backends::PostgresRabbit).await;
    create_with_source(&h, &url, BTreeMap::from([("ssh_key", server.deploy_key.clone())]), None).await;
    let d = h.deploy("test", "main").await;
    assert_eq!(d.status, Status::Succeeded, "{:?}", h.events(d.id).await);
    let pinned: Vec<String> = project_events(&h)
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::SourceHostKeyPinned(p) => Some(p.known_host),
            _ => None,
        })
        .collect();
    assert_eq!(pinned, [server.known_host()], "the key met first is recorded on the project");
    let project = requests::load_project(&*h.store, &h.project).await.unwrap().unwrap();
    assert_eq!(project.source.known_hosts, [server.known_host()]);

    let server = server.change_host_key();
    app.commit(&busybox_app("v2", "[web]\nport = 80\n", ""), "v2");
    publish(&app.path(), &bare);
    let d = h.deploy("test", "main").await;
    let (step, reason) = failure(&d);
    assert_eq!(step, Step::CheckServices);
    assert!(reason.contains("SSH host key") && reason.contains("changed") && reason.contains(&server.known_host()), "{reason}");
    assert!(reason.contains("--known-host"), "says what to do: {reason}");
    assert_eq!(h.routed_page("test").await.map(|(_, body)| body.trim().to_string()), Ok("over ssh".to_string()), "v1 still serves");
    h.shutdown().await;
}

// ------------------------------------------------- the fetch, without the pipeline

fn access_of(repository: &str, credentials: &[(&str, &str)], known_hosts: &[String], mirrors: &Path) -> Access {
    let context: DeploymentContext = serde_json::from_value(serde_json::json!({
        "deployment_id": Uuid::now_v7(), "project": "p", "environment": "test",
        "repository": repository, "git_ref": "main",
        "source": { "known_hosts": known_hosts },
    }))
    .unwrap();
    let settings: Settings = credentials.iter().map(|(k, v)| (source_key(k), v.to_string())).collect();
    Access::of(&context, &settings, mirrors)
}

#[test]
fn the_mirror_is_reused_so_a_second_fetch_brings_only_new_objects() {
    let server = SshGit::start();
    let (bare, url) = server.repository("app.git");
    let app = AppRepo::new();
    let mut files = BTreeMap::new();
    for i in 0..50 {
        files.insert(format!("src/file{i}.txt"), format!("file {i}\n").repeat(100).into_bytes());
    }
    let v1 = app.commit(&files, "v1");
    publish(&app.path(), &bare);
    let workspaces = tempfile::tempdir().unwrap();
    let access = access_of(&url, &[("ssh_key", &server.deploy_key)], &[server.known_host()], workspaces.path());

    let shown = git::shown_repository(&url);
    let first = git_remote::fetch(&url, &shown, "main", &access).unwrap();
    assert!(first.received_objects >= 52, "a commit, two trees and 50 blobs: {}", first.received_objects);
    drop(first);
    let again = git_remote::fetch(&url, &shown, "main", &access).unwrap();
    assert_eq!(again.received_objects, 0, "nothing new");
    drop(again);
    app.commit(&BTreeMap::from([("src/file7.txt".to_string(), b"changed\n".to_vec())]), "v2");
    publish(&app.path(), &bare);
    let next = git_remote::fetch(&url, &shown, "main", &access).unwrap();
    assert!(next.received_objects <= 4, "a commit, two trees and a blob: {}", next.received_objects);
    drop(next);

    // The checkout from the mirror has the new commit's files.
    let dest = workspaces.path().join("checkout");
    let (commit, met) = git::fresh_checkout(&url, "main", &dest, &access).unwrap();
    assert_eq!(met, None, "the host key was given, not met");
    assert_eq!(commit.len(), 40);
    assert_eq!(std::fs::read_to_string(dest.join("src/file7.txt")).unwrap(), "changed\n");
    assert_eq!(std::fs::read_dir(workspaces.path().join(".mirrors")).unwrap().count(), 2, "one mirror and its lock");

    // A commit by its SHA (what a webhook deploys) that is no branch's head
    // any more: git's server refuses to send it by id, so the branch heads
    // come, then their history.
    let (old, _) = git::fresh_checkout(&url, &v1, &workspaces.path().join("old"), &access).unwrap();
    assert_eq!(old, v1);
    assert_eq!(std::fs::read_to_string(workspaces.path().join("old/src/file7.txt")).unwrap(), "file 7\n".repeat(100));

    // A key made by `--generate-ssh-key`, once its public half is on the server.
    let (private, public) = git_remote::generate_deploy_key("slipway:test").unwrap();
    let generated = access_of(&url, &[("ssh_key", &private)], &[server.known_host()], workspaces.path());
    let refused = git_remote::fetch(&url, &shown, "main", &generated).err().unwrap();
    assert!(matches!(refused, SourceError::BadCredentials { ssh: true, .. }), "{refused:?}");
    server.authorize(&public);
    assert_eq!(git_remote::fetch(&url, &shown, "main", &generated).map(|f| f.received_objects).ok(), Some(0));
}

/// `server` serving `app.git` with one commit on `main`, and the
/// repository's URL.
fn with_one_commit(server: HttpsGit) -> (HttpsGit, String) {
    let (bare, url) = server.repository("app.git");
    let app = AppRepo::new();
    app.commit(&BTreeMap::from([("a.txt".to_string(), b"a\n".to_vec())]), "v1");
    publish(&app.path(), &bare);
    (server, url)
}

/// libgit2 sends a request's body only once the server has answered its
/// headers (`Expect: 100-continue`, `steps::git_http`), so a fetch does not
/// wait out the server's delayed acknowledgement of them.
#[test]
fn an_https_fetch_asks_the_server_to_answer_its_headers_before_the_body() {
    let (server, url) = with_one_commit(HttpsGit::start("deploy", "s3cret-token"));
    let workspaces = tempfile::tempdir().unwrap();
    let access = access_of(&url, &[("username", "deploy"), ("token", "s3cret-token"), ("ca_cert", &server.ca_pem)], &[], workspaces.path());
    let fetched = git_remote::fetch(&url, &git::shown_repository(&url), "main", &access).unwrap();
    assert!(fetched.received_objects >= 3, "a commit, a tree and a blob: {}", fetched.received_objects);
    let requests = server.requests();
    let posts: Vec<&String> = requests.iter().filter(|r| r.starts_with("POST ") && r.ends_with("status=200")).collect();
    assert!(!posts.is_empty(), "the fetch posted its wants: {requests:?}");
    assert!(posts.iter().all(|r| r.contains("expect=100-continue")), "{requests:?}");

    // A server (or proxy) that refuses the header: the reason says what to set.
    let (refusing, url) = with_one_commit(HttpsGit::refusing_expect("deploy", "s3cret-token"));
    let access =
        access_of(&url, &[("username", "deploy"), ("token", "s3cret-token"), ("ca_cert", &refusing.ca_pem)], &[], workspaces.path());
    let refused = git_remote::fetch(&url, &git::shown_repository(&url), "main", &access).err().unwrap();
    let reason = refused.to_string();
    assert!(matches!(refused, SourceError::Fetch { .. }), "{refused:?}");
    assert!(reason.contains("417") && reason.contains("SLIPWAY_GIT_EXPECT_CONTINUE=off"), "{reason}");
    assert!(!reason.contains("s3cret-token"), "{reason}");
}

#[test]
fn a_mirror_fetched_shallow_many_times_is_repacked_and_still_checks_out() {
    let server = SshGit::start();
    let (bare, url) = server.repository("app.git");
    let app = AppRepo::new();
    let workspaces = tempfile::tempdir().unwrap();
    let access = access_of(&url, &[("ssh_key", &server.deploy_key)], &[server.known_host()], workspaces.path());
    let shown = git::shown_repository(&url);
    let packs = || {
        let mirrors = workspaces.path().join(".mirrors");
        let mirror = std::fs::read_dir(&mirrors).unwrap().flatten().find(|e| e.path().extension().is_some_and(|x| x == "git")).unwrap();
        std::fs::read_dir(mirror.path().join("objects/pack"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
            .count()
    };
    // One deployment's fetch (depth 1) per commit: a pack each.
    for i in 0..git_remote::REPACK_AT {
        app.commit(&BTreeMap::from([("app.txt".to_string(), format!("version {i}\n").into_bytes())]), &format!("v{i}"));
        publish(&app.path(), &bare);
        drop(git_remote::fetch(&url, &shown, "main", &access).unwrap());
    }
    assert_eq!(packs(), git_remote::REPACK_AT);
    // The next fetch folds them into one first, then adds its own.
    app.commit(&BTreeMap::from([("app.txt".to_string(), b"latest\n".to_vec())]), "latest");
    publish(&app.path(), &bare);
    let dest = workspaces.path().join("checkout");
    let (commit, _) = git::fresh_checkout(&url, "main", &dest, &access).unwrap();
    assert_eq!(commit.len(), 40);
    assert_eq!(std::fs::read_to_string(dest.join("app.txt")).unwrap(), "latest\n");
    assert_eq!(packs(), 2, "the folded pack and the last fetch's");
}

#[test]
fn a_deploy_key_with_a_passphrase_opens_with_it_and_is_refused_clearly_without() {
    let server = SshGit::start();
    let (bare, url) = server.repository("app.git");
    let app = AppRepo::new();
    app.commit(&BTreeMap::from([("a.txt".to_string(), b"a\n".to_vec())]), "v1");
    publish(&app.path(), &bare);
    let mirrors = tempfile::tempdir().unwrap();
    let shown = git::shown_repository(&url);
    let fetch = |credentials: &[(&str, &str)]| {
        let access = access_of(&url, credentials, &[server.known_host()], mirrors.path());
        git_remote::fetch(&url, &shown, "main", &access)
    };
    // The OpenSSH form (bcrypt KDF) and a traditional PEM form (OpenSSL).
    for (name, form) in [("openssh", &["-t", "ed25519"][..]), ("pem", &["-t", "rsa", "-b", "2048", "-m", "PEM"][..])] {
        let key = server.authorized_key(name, "correct horse", form);
        assert!(git_remote::ssh_key_is_encrypted(&key), "{name}");

        let locked = fetch(&[("ssh_key", &key)]).err().unwrap();
        assert!(matches!(locked, SourceError::LockedSshKey { passphrase_given: false, .. }), "{name}: {locked:?}");
        let reason = locked.to_string();
        assert!(reason.contains(&shown) && reason.contains("`main`") && reason.contains("--ssh-key-passphrase-file"), "{reason}");

        let wrong = fetch(&[("ssh_key", &key), ("ssh_key_passphrase", "not-the-passphrase")]).err().unwrap();
        assert!(matches!(wrong, SourceError::LockedSshKey { passphrase_given: true, .. }), "{name}: {wrong:?}");
        assert!(!wrong.to_string().contains("not-the-passphrase"), "the passphrase is not shown: {wrong}");

        let fetched = fetch(&[("ssh_key", &key), ("ssh_key_passphrase", "correct horse")]);
        assert!(fetched.is_ok(), "{name}: {:?}", fetched.err());
    }
}

#[test]
fn fetch_failures_name_the_repository_the_ref_and_what_to_do() {
    let (server, url) = with_one_commit(HttpsGit::start("deployer", "right"));
    let mirrors = tempfile::tempdir().unwrap();
    let fetch = |url: &str, git_ref: &str, credentials: &[(&str, &str)]| {
        let access = access_of(url, credentials, &[], mirrors.path());
        git_remote::fetch(url, &git::shown_repository(url), git_ref, &access).map(|f| f.received_objects)
    };
    let ca = server.ca_pem.as_str();

    let fine = fetch(&url, "main", &[("username", "deployer"), ("token", "right"), ("ca_cert", ca)]);
    assert!(fine.is_ok(), "{fine:?}");
    let missing = fetch(&url, "no-such-branch", &[("username", "deployer"), ("token", "right"), ("ca_cert", ca)]);
    let resolved = missing.and_then(|_| {
        let access = access_of(&url, &[("username", "deployer"), ("token", "right"), ("ca_cert", ca)], &[], mirrors.path());
        git::peek_file(&url, "no-such-branch", "slipway.toml", &access).map(|_| 0)
    });
    assert!(matches!(resolved, Err(SourceError::RefNotFound { .. })), "{resolved:?}");
    let untrusted = fetch(&url, "main", &[("username", "deployer"), ("token", "right")]).unwrap_err();
    assert!(matches!(untrusted, SourceError::UntrustedCertificate { .. }), "{untrusted:?}");
    assert!(untrusted.to_string().contains("--ca-cert"), "{untrusted}");
    let none = fetch(&url, "main", &[("ca_cert", ca)]).unwrap_err();
    assert!(matches!(none, SourceError::NoCredentials { ssh: false, .. }), "{none:?}");
    assert!(none.to_string().contains(&url) && none.to_string().contains("`main`"), "{none}");
    let unknown = fetch("https://no-such-host.invalid/app.git", "main", &[]).unwrap_err();
    assert!(matches!(unknown, SourceError::UnknownHost { .. }), "{unknown:?}");
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let closed = fetch(&format!("https://127.0.0.1:{closed_port}/app.git"), "main", &[]).unwrap_err();
    assert!(matches!(closed, SourceError::Unreachable { .. }), "{closed:?}");
    assert!(closed.to_string().contains("reachable from the worker"), "{closed}");

    // A trusted host key that does not match is refused before any credential is offered.
    let ssh = SshGit::start();
    let (_, ssh_url) = ssh.repository("other.git");
    let wrong_key = format!(
        "{} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl",
        ssh.known_host().split_whitespace().next().unwrap()
    );
    let access = access_of(&ssh_url, &[("ssh_key", &ssh.deploy_key)], &[wrong_key], mirrors.path());
    let changed = git_remote::fetch(&ssh_url, &ssh_url, "main", &access).err().unwrap();
    assert!(matches!(changed, SourceError::HostKeyChanged { .. }), "{changed:?}");
}

/// A server at `url` (`{}` is its port) that accepts one connection and
/// says nothing for `seconds`.
fn silent_server(url: &str, seconds: u64) -> (String, std::thread::JoinHandle<()>) {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = url.replace("{}", &silent.local_addr().unwrap().port().to_string());
    let held = std::thread::spawn(move || {
        let accepted = silent.accept();
        std::thread::sleep(std::time::Duration::from_secs(seconds));
        drop(accepted);
    });
    (url, held)
}

#[test]
fn a_server_that_never_answers_times_out_and_a_busy_mirror_is_worked_around() {
    // Accepts a connection and never says a word: TLS never starts.
    let (url, held) = silent_server("https://127.0.0.1:{}/app.git", 5);
    let mirrors = tempfile::tempdir().unwrap();
    // Given up once it said nothing for its first word's time, well before the deadline.
    let access = access_of(&url, &[], &[], mirrors.path())
        .with_deadline(std::time::Duration::from_secs(30))
        .with_first_word(std::time::Duration::from_secs(1));
    let started = std::time::Instant::now();
    let timed_out = git_remote::fetch(&url, &url, "main", &access).err().unwrap();
    assert!(matches!(timed_out, SourceError::Timeout { silent: Some(1), .. }), "{timed_out:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "{:?}", started.elapsed());
    let said = timed_out.to_string();
    assert!(said.contains("timed out") && said.contains("`main`") && said.contains("said nothing for 1 s"), "{said}");
    assert!(!said.contains("Expect: 100-continue"), "TLS never started, so no proxy hint: {said}");
    let _ = held.join();

    // The same over SSH: no SSH banner ever comes. The HTTPS hint is not given.
    let (url, held) = silent_server("ssh://git@127.0.0.1:{}/app.git", 3);
    let access = access_of(&url, &[], &[], mirrors.path()).with_deadline(std::time::Duration::from_secs(2));
    let timed_out = git_remote::fetch(&url, &url, "main", &access).err().unwrap();
    assert!(matches!(timed_out, SourceError::Timeout { ssh: true, silent: Some(2), .. }), "{timed_out:?}");
    assert!(!timed_out.to_string().contains("100-continue"), "no HTTPS hint for an SSH server: {timed_out}");
    let _ = held.join();

    // A mirror another fetch keeps locked: this fetch uses one of its own.
    let server = SshGit::start();
    let (bare, url) = server.repository("app.git");
    let app = AppRepo::new();
    app.commit(&BTreeMap::from([("a.txt".to_string(), b"a\n".to_vec())]), "v1");
    publish(&app.path(), &bare);
    let access = access_of(&url, &[("ssh_key", &server.deploy_key)], &[server.known_host()], mirrors.path())
        .with_deadline(std::time::Duration::from_secs(4));
    drop(git_remote::fetch(&url, &url, "main", &access).unwrap());
    let locks: Vec<std::fs::File> = std::fs::read_dir(mirrors.path().join(".mirrors"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "lock"))
        .map(|e| std::fs::File::open(e.path()).unwrap())
        .collect();
    assert!(!locks.is_empty());
    for lock in &locks {
        lock.lock().unwrap();
    }
    let fetched = git_remote::fetch(&url, &url, "main", &access).unwrap();
    assert!(fetched.mirror.once.is_some() && fetched.received_objects >= 3, "{:?}", fetched.mirror.once);
    let once = fetched.mirror.once.clone().unwrap();
    drop(fetched);
    assert!(!once.exists(), "the one-off mirror is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polling_deploys_a_new_head_once_and_honours_the_skip_phrase() {
    require_docker();
    let server = SshGit::start();
    let (bare, url) = server.repository("app.git");
    let app = AppRepo::new();
    let v1 = app.commit(&busybox_app("polled v1", "[web]\nport = 80\n", ""), "v1");
    publish(&app.path(), &bare);

    let h = Harness::start(Backends::PostgresRabbit).await;
    let known = Some(vec![server.known_host()]);
    create_with_source(&h, &url, BTreeMap::from([("ssh_key", server.deploy_key.clone())]), known).await;
    slipway_engine::auto_deploy::set_rule(&*h.store, "test", &h.project, "main", "test", Some(5)).await.unwrap().unwrap();
    let workspaces = h.data.path().join("poller");
    let poll = || async {
        let project = requests::load_project(&*h.store, &h.project).await.unwrap().unwrap();
        slipway_node::poll::poll_once(&*h.store, &workspaces, project).await.unwrap();
    };
    let pushes = || async {
        project_events(&h)
            .await
            .into_iter()
            .filter_map(|e| match e {
                Event::PushReceived(p) => Some((p.commit, p.deployments.into_iter().map(|d| d.deployment_id).collect::<Vec<_>>())),
                Event::PushSkipped(p) => Some((p.commit, vec![])),
                _ => None,
            })
            .collect::<Vec<_>>()
    };

    poll().await;
    let recorded = pushes().await;
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    let (commit, deployments) = &recorded[0];
    assert_eq!((commit, deployments.len()), (&v1, 1));
    let d = h.wait_finished(deployments[0], std::time::Duration::from_secs(120)).await;
    assert_eq!(d.status, Status::Succeeded, "{:?}", h.events(d.id).await);
    assert_eq!(d.context.commit.as_deref(), Some(v1.as_str()));
    assert_eq!(h.routed_page("test").await.map(|(_, body)| body.trim().to_string()), Ok("polled v1".to_string()));

    poll().await;
    assert_eq!(pushes().await.len(), 1, "an unchanged head is recorded once");

    let skipped = app.commit(&busybox_app("polled v2", "[web]\nport = 80\n", ""), "v2 [skip deploy]");
    publish(&app.path(), &bare);
    poll().await;
    let recorded = pushes().await;
    assert_eq!(recorded.last(), Some(&(skipped, vec![])), "the skip phrase skips: {recorded:?}");
    let events = project_events(&h).await;
    assert!(events.iter().any(|e| matches!(e, Event::PushSkipped(s) if s.reason.contains("[skip deploy]"))), "{events:?}");
}

#[test]
fn submodules_are_checked_out_with_the_same_access_when_asked() {
    let server = SshGit::start();
    let (lib_bare, _) = server.repository("lib.git");
    let lib = AppRepo::new();
    let lib_commit = lib.commit(&BTreeMap::from([("lib.txt".to_string(), b"from the submodule\n".to_vec())]), "lib");
    publish(&lib.path(), &lib_bare);
    let (app_bare, url) = server.repository("app.git");
    let app = AppRepo::new();
    app.commit(&BTreeMap::from([("app.txt".to_string(), b"app\n".to_vec())]), "app");
    // A submodule at a URL relative to the app's own (as on any git host).
    std::fs::write(app.path().join(".gitmodules"), "[submodule \"lib\"]\n\tpath = lib\n\turl = ../lib.git\n").unwrap();
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git").args(args).current_dir(app.path()).output().unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    git(&["update-index", "--add", "--cacheinfo", &format!("160000,{lib_commit},lib")]);
    git(&["add", ".gitmodules"]);
    git(&["-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-q", "-m", "lib as a submodule"]);
    publish(&app.path(), &app_bare);

    let workspaces = tempfile::tempdir().unwrap();
    let context: DeploymentContext = serde_json::from_value(serde_json::json!({
        "deployment_id": Uuid::now_v7(), "project": "p", "environment": "test", "repository": url, "git_ref": "main",
        "source": { "known_hosts": [server.known_host()], "submodules": true },
    }))
    .unwrap();
    let settings: Settings = [(source_key("ssh_key"), server.deploy_key.clone())].into_iter().collect();
    let with = Access::of(&context, &settings, workspaces.path());
    git::fresh_checkout(&url, "main", &workspaces.path().join("with"), &with).unwrap();
    assert_eq!(std::fs::read_to_string(workspaces.path().join("with/lib/lib.txt")).unwrap(), "from the submodule\n");

    let without = access_of(&url, &[("ssh_key", &server.deploy_key)], &[server.known_host()], workspaces.path());
    git::fresh_checkout(&url, "main", &workspaces.path().join("without"), &without).unwrap();
    assert!(!workspaces.path().join("without/lib/lib.txt").exists(), "submodules only when the project asks");
}
