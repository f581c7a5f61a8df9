//! Repositories reached over a network (`https://`, `http://`, `ssh://`,
//! `user@host:path`), fetched through a per-worker mirror.
//!
//! Each repository gets one bare mirror under `<workspaces>/.mirrors/`,
//! named by a hash of its address. A deployment fetches only the ref it
//! needs, shallow (depth 1) when the ref is a name or a full SHA, into
//! that mirror; the next deployment of the same repository fetches only
//! what the mirror lacks. The checkout then links the mirror's objects
//! into the deployment's workspace, as for a local repository. A file lock
//! keeps two fetches of one mirror (threads or worker processes sharing a
//! data directory) from interleaving. Mirrors do not pile up: each fetch
//! removes the mirrors no fetch has used for `MIRROR_IDLE` (a repository
//! no longer deployed; the next deployment fetches it anew), and the
//! one-off mirrors a crashed fetch left behind. Nor do their packs: past
//! `REPACK_AT`, a fetch first folds them into one (`repack`).
//!
//! Credentials come resolved from the value table (see
//! [`source_credentials`]); they are handed to libgit2 only through its
//! credential callback, never put in a URL, so no error text can echo them.
//! SSH host keys are checked against the project's trusted keys; when it
//! trusts none yet, the key met is accepted and reported, and the worker
//! records it on the project (trust on first use). HTTPS servers are
//! checked against the system's CA bundle and, when the project has one,
//! its own CA certificate. Every failure is classified into a reason that
//! names the repository (redacted), the ref and what to do.

use std::cell::RefCell;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use git2::{AutotagOption, CertificateCheckStatus, Cred, CredentialType, FetchOptions, RemoteCallbacks, Repository};
use sha2::{Digest, Sha256};
use slipway_core::remote::{remote_address, RemoteAddress};
use slipway_proto::command::DeploymentContext;
use slipway_proto::event::{same_host_key, trusted_for};

use super::git::SourceError;
use super::Settings;

/// Resolved credentials travel to the steps inside the settings map under
/// these keys. No setting can collide: setting names are environment
/// variable names, which have no dots; and containers never get them (see
/// [`is_source_key`]).
const SOURCE_KEY_PREFIX: &str = "slipway.source.";

/// How long a fetch may take in all before it is abandoned.
const FETCH_DEADLINE: Duration = Duration::from_secs(600);
/// How long a server that accepted the connection may stay silent (no TLS
/// certificate, no SSH host key, no credential request, no progress)
/// before the fetch is abandoned: a listener that is not a git server, or
/// a hung one, fails the step in a minute instead of at the deadline.
const FIRST_WORD: Duration = Duration::from_secs(60);
/// Packs in a mirror from which the next fetch first folds them into one
/// (see [`repack`]).
pub const REPACK_AT: usize = 32;
/// How long a fetch waits for another fetch of the same mirror to finish
/// before it fetches into a mirror of its own for this once.
const MIRROR_WAIT: Duration = Duration::from_secs(30);
/// A mirror no fetch has used for this long is removed (see `sweep`).
const MIRROR_IDLE: Duration = Duration::from_secs(30 * 24 * 3600);
/// A one-off mirror older than this was left by a fetch that crashed:
/// every fetch ends well within it (`FETCH_DEADLINE`).
const ONCE_LEFT_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How long connecting to the git server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// libgit2's depth that turns a shallow repository into a complete one.
const UNSHALLOW: i32 = i32::MAX;

/// The settings key a resolved credential travels under.
pub fn source_key(name: &str) -> String {
    format!("{SOURCE_KEY_PREFIX}{name}")
}

/// True for a key holding a source credential: never an app's environment.
pub fn is_source_key(key: &str) -> bool {
    key.starts_with(SOURCE_KEY_PREFIX)
}

/// What a worker needs to reach one repository, resolved for one deployment.
#[derive(Clone, Default)]
pub struct Access {
    token: Option<String>,
    username: Option<String>,
    password: Option<String>,
    ssh_key: Option<String>,
    ssh_key_passphrase: Option<String>,
    ca_cert: Option<String>,
    known_hosts: Vec<String>,
    pub submodules: bool,
    /// Where this worker keeps its mirrors.
    mirrors: PathBuf,
    /// How long a fetch may take in all ([`FETCH_DEADLINE`] unless a test says otherwise).
    deadline: Option<Duration>,
    /// How long the server may say nothing ([`FIRST_WORD`] unless a test says otherwise).
    first_word: Option<Duration>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Which credentials, never their values.
        f.debug_struct("Access")
            .field("token", &self.token.is_some())
            .field("username", &self.username.is_some())
            .field("password", &self.password.is_some())
            .field("ssh_key", &self.ssh_key.is_some())
            .field("ssh_key_passphrase", &self.ssh_key_passphrase.is_some())
            .field("ca_cert", &self.ca_cert.is_some())
            .field("known_hosts", &self.known_hosts)
            .finish()
    }
}

impl Access {
    /// The deployment's access: credentials from the resolved settings,
    /// host keys from the context, mirrors under `workspaces`.
    pub fn of(context: &DeploymentContext, env: &Settings, workspaces: &Path) -> Access {
        let credentials =
            env.iter().filter_map(|(key, value)| Some((key.strip_prefix(SOURCE_KEY_PREFIX)?.to_string(), value.clone()))).collect();
        Access::for_source(&context.source, &credentials, workspaces)
    }

    /// A project's access outside a deployment (the server's poller):
    /// `credentials` are the resolved values by credential name.
    pub fn for_source(
        source: &slipway_proto::event::SourceAccess,
        credentials: &std::collections::BTreeMap<String, String>,
        workspaces: &Path,
    ) -> Access {
        let credential = |name: &str| credentials.get(name).cloned();
        Access {
            token: credential("token"),
            username: credential("username"),
            password: credential("password"),
            ssh_key: credential("ssh_key"),
            ssh_key_passphrase: credential("ssh_key_passphrase"),
            ca_cert: credential("ca_cert"),
            known_hosts: source.known_hosts.clone(),
            submodules: source.submodules,
            mirrors: workspaces.join(".mirrors"),
            deadline: None,
            first_word: None,
        }
    }

    /// The same access with its mirrors somewhere else (tests, benches).
    pub fn with_mirrors(mut self, mirrors: PathBuf) -> Access {
        self.mirrors = mirrors;
        self
    }

    /// The same access with another limit on a whole fetch (tests).
    pub fn with_deadline(mut self, deadline: Duration) -> Access {
        self.deadline = Some(deadline);
        self
    }

    /// The same access with another limit on the server's silence (tests).
    pub fn with_first_word(mut self, first_word: Duration) -> Access {
        self.first_word = Some(first_word);
        self
    }

    fn deadline(&self) -> Duration {
        self.deadline.unwrap_or(FETCH_DEADLINE)
    }

    /// Waits for a fetch's or listing's `outcome`: abandoned past the
    /// deadline, or sooner when the server has said nothing for
    /// `FIRST_WORD` (`timed_out(Some(seconds))`). `heard` is that call's
    /// own flag, which its callbacks set when the server speaks.
    fn wait<T>(
        &self,
        outcome: &std::sync::mpsc::Receiver<Result<T, SourceError>>,
        heard: &AtomicBool,
        timed_out: impl Fn(Option<u64>) -> SourceError,
    ) -> Result<T, SourceError> {
        let started = Instant::now();
        let first_word = self.first_word.unwrap_or(FIRST_WORD).min(self.deadline());
        loop {
            match outcome.recv_timeout(Duration::from_millis(100)) {
                Ok(result) => return result,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Err(timed_out(None)),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
            let waited = started.elapsed();
            if waited >= first_word && !heard.load(Ordering::Relaxed) {
                return Err(timed_out(Some(first_word.as_secs().max(1))));
            }
            if waited >= self.deadline() {
                return Err(timed_out(None));
            }
        }
    }

    /// Whether credentials were configured that a fetch can offer.
    fn has_credentials(&self) -> bool {
        self.token.is_some() || self.password.is_some() || self.ssh_key.is_some()
    }
}

/// A mirror, locked for as long as this value lives.
pub struct Mirror {
    pub repo: Repository,
    pub lock: File,
    /// A mirror made for one fetch (the shared one was busy), removed on drop.
    pub once: Option<PathBuf>,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        if let Some(path) = &self.once {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// What a fetch met that the worker reports.
#[derive(Debug, Default)]
struct Observed {
    /// Offered credentials the server refused.
    credentials_refused: bool,
    /// The server asked for credentials the project does not have.
    credentials_missing: bool,
    /// A host key nobody trusted yet, accepted (trust on first use).
    met_host_key: Option<String>,
    /// A host key unlike every trusted one: the fetch was stopped.
    refused_host_key: Option<String>,
    /// The project's CA certificate could not be used.
    ca_problem: Option<String>,
    timed_out: bool,
}

/// A completed fetch: the locked mirror, the host key met on first use,
/// and how many objects came over the network.
pub struct Fetched {
    pub mirror: Mirror,
    pub met_host_key: Option<String>,
    pub received_objects: usize,
}

/// Fetches what `git_ref` needs from `repository` into this worker's mirror,
/// within the access's deadline. libgit2 has no safe per-fetch timeout, and
/// a server that accepts a connection and then says nothing would hold a
/// fetch forever; so the fetch runs on a thread of its own, and past the
/// deadline it is abandoned (the thread ends when the connection does) and
/// the step fails as timed out. A later fetch that finds the mirror still
/// locked by it fetches into a mirror of its own for that once.
pub fn fetch(repository: &str, shown: &str, git_ref: &str, access: &Access) -> Result<Fetched, SourceError> {
    let address =
        remote_address(repository).ok_or_else(|| SourceError::Fetch { repo: shown.into(), why: "not a network address".into() })?;
    if address.ssh && access.ssh_key_passphrase.is_none() && access.ssh_key.as_deref().is_some_and(ssh_key_is_encrypted) {
        return Err(SourceError::LockedSshKey { repo: shown.into(), git_ref: git_ref.into(), passphrase_given: false });
    }
    probe(&address, shown, git_ref)?;
    let mirror = open_mirror(repository, shown, &access.mirrors, MIRROR_WAIT.min(access.deadline() / 4))?;
    let (done, outcome) = std::sync::mpsc::channel();
    let heard = Arc::new(AtomicBool::new(false));
    let owned = (repository.to_string(), shown.to_string(), git_ref.to_string(), access.clone(), heard.clone());
    let ssh = address.ssh;
    let thread = std::thread::Builder::new().name("slipway-fetch".into()).spawn(move || {
        let (repository, shown, git_ref, access, heard) = owned;
        let _ = done.send(fetch_into(mirror, &address, &repository, &shown, &git_ref, &access, &heard));
    });
    let timed_out = |silent| SourceError::Timeout { repo: shown.into(), git_ref: git_ref.into(), ssh, silent };
    if let Err(e) = thread {
        return Err(SourceError::Fetch { repo: shown.into(), why: format!("cannot start the fetch: {e}") });
    }
    access.wait(&outcome, &heard, timed_out)
}

fn fetch_into(
    mirror: Mirror,
    address: &RemoteAddress,
    repository: &str,
    shown: &str,
    git_ref: &str,
    access: &Access,
    heard: &AtomicBool,
) -> Result<Fetched, SourceError> {
    let mut met_host_key = None;
    let mut received_objects = 0;
    let attempts = attempts(git_ref);
    let last = attempts.len() - 1;
    for (i, (refspecs, depth)) in attempts.into_iter().enumerate() {
        let observed = RefCell::new(Observed::default());
        let outcome = {
            let mut remote =
                mirror.repo.remote_anonymous(repository).map_err(|e| SourceError::Fetch { repo: shown.into(), why: e.message().into() })?;
            let mut options = FetchOptions::new();
            options.remote_callbacks(callbacks(address, access, &observed, heard)).download_tags(AutotagOption::None);
            if let Some(depth) = depth {
                options.depth(depth);
            }
            let fetched = remote.fetch(&refspecs, Some(&mut options), Some("slipway: fetch"));
            fetched.map(|()| remote.stats().received_objects())
        };
        let observed = observed.into_inner();
        met_host_key = met_host_key.or(observed.met_host_key.clone());
        match outcome {
            Ok(received) => {
                received_objects += received;
                // A commit asked for by SHA may still be missing after the
                // branch heads came: then the next attempt goes deeper.
                if i == last || !is_full_sha(git_ref) || has_commit(&mirror.repo, git_ref) {
                    return Ok(Fetched { mirror, met_host_key, received_objects });
                }
            }
            // The server does not let a client ask for a commit by its SHA
            // (git's default, uploadpack.allowReachableSHA1InWant off): take
            // the branch heads instead, then their history.
            Err(e) if i < last && refused_sha_want(&e) => {}
            Err(e) => return Err(classify(&e, &observed, address, shown, git_ref, access)),
        }
    }
    Err(SourceError::RefNotFound { git_ref: git_ref.into(), repo: shown.into() })
}

/// What to fetch for `git_ref`, in order until one brings it: a full SHA
/// first by itself, then every branch head, then every branch and tag with
/// their history; anything else in one go (see [`wanted`]).
fn attempts(git_ref: &str) -> Vec<(Vec<String>, Option<i32>)> {
    if !is_full_sha(git_ref) {
        return vec![wanted(git_ref)];
    }
    let heads = || vec!["+refs/heads/*:refs/remotes/origin/*".to_string()];
    let everything = vec!["+refs/heads/*:refs/remotes/origin/*".to_string(), "+refs/tags/*:refs/tags/*".to_string()];
    vec![wanted(git_ref), (heads(), Some(1)), (everything, Some(UNSHALLOW))]
}

fn is_full_sha(git_ref: &str) -> bool {
    git_ref.len() == 40 && git_ref.bytes().all(|b| b.is_ascii_hexdigit())
}

fn has_commit(repo: &Repository, sha: &str) -> bool {
    git2::Oid::from_str(sha).is_ok_and(|oid| repo.find_commit(oid).is_ok())
}

/// libgit2's refusal (or the server's) to fetch an object by its id.
fn refused_sha_want(e: &git2::Error) -> bool {
    let message = e.message().to_lowercase();
    message.contains("specific object") || message.contains("not our ref") || message.contains("want")
}

/// The repository's branches and the commits they point at now (as `git
/// ls-remote --heads`), with the same credentials, host key and
/// certificate checks as a fetch, within the access's deadline.
pub fn list_branches(repository: &str, shown: &str, access: &Access) -> Result<Vec<(String, String)>, SourceError> {
    // A local repository is listed in place (no probe, no credentials).
    let address = remote_address(repository);
    if let Some(address) = &address {
        probe(address, shown, "(branches)")?;
    }
    let address = address.unwrap_or(RemoteAddress { ssh: false, host: String::new(), port: None });
    let (done, outcome) = std::sync::mpsc::channel();
    let heard = Arc::new(AtomicBool::new(false));
    let owned = (repository.to_string(), shown.to_string(), access.clone(), heard.clone());
    let ssh = address.ssh;
    let thread = std::thread::Builder::new().name("slipway-ls-remote".into()).spawn(move || {
        let (repository, shown, access, heard) = owned;
        let observed = RefCell::new(Observed::default());
        let listed = (|| {
            let mut remote = git2::Remote::create_detached(repository.as_str())?;
            let connection = remote.connect_auth(git2::Direction::Fetch, Some(callbacks(&address, &access, &observed, &heard)), None)?;
            let heads = connection.list()?;
            Ok::<_, git2::Error>(
                heads
                    .iter()
                    .filter_map(|h| Some((h.name().strip_prefix("refs/heads/")?.to_string(), h.oid().to_string())))
                    .collect::<Vec<_>>(),
            )
        })();
        let result = listed.map_err(|e| classify(&e, &observed.borrow(), &address, &shown, "(branches)", &access));
        let _ = done.send(result);
    });
    if let Err(e) = thread {
        return Err(SourceError::Fetch { repo: shown.into(), why: format!("cannot start listing branches: {e}") });
    }
    let timed_out = |silent| SourceError::Timeout { repo: shown.into(), git_ref: "(branches)".into(), ssh, silent };
    access.wait(&outcome, &heard, timed_out)
}

/// The message of `commit`, if the fetched mirror has it.
pub fn commit_message(fetched: &Fetched, commit: &str) -> Option<String> {
    let oid = git2::Oid::from_str(commit).ok()?;
    let found = fetched.mirror.repo.find_commit(oid).ok()?;
    found.message().ok().map(str::to_string)
}

/// The refspecs and depth that bring `git_ref` into the mirror: one ref,
/// shallow, when it is a name or a full SHA; every branch and tag with
/// their history when it may be an abbreviated SHA (only history can
/// resolve one).
fn wanted(git_ref: &str) -> (Vec<String>, Option<i32>) {
    let hex = git_ref.bytes().all(|b| b.is_ascii_hexdigit());
    if git_ref == "HEAD" {
        (vec!["+HEAD:refs/remotes/origin/HEAD".into()], Some(1))
    } else if let Some(branch) = git_ref.strip_prefix("refs/heads/") {
        (vec![format!("+refs/heads/{branch}:refs/remotes/origin/{branch}")], Some(1))
    } else if git_ref.starts_with("refs/tags/") {
        (vec![format!("+{git_ref}:{git_ref}")], Some(1))
    } else if hex && git_ref.len() == 40 {
        (vec![format!("+{git_ref}:refs/slipway/commits/{git_ref}")], Some(1))
    } else if hex && git_ref.len() >= 4 {
        let all = vec!["+refs/heads/*:refs/remotes/origin/*".to_string(), "+refs/tags/*:refs/tags/*".to_string()];
        (all, Some(UNSHALLOW))
    } else {
        let both =
            vec![format!("+refs/heads/{git_ref}:refs/remotes/origin/{git_ref}"), format!("+refs/tags/{git_ref}:refs/tags/{git_ref}")];
        (both, Some(1))
    }
}

/// Resolves the host and opens (then drops) one connection within
/// [`CONNECT_TIMEOUT`], so an unknown host, a closed port or a silent
/// network fails fast and by name: libgit2's own connect waits for the
/// operating system's timeout, and its timeout settings are global and
/// unsafe to set.
fn probe(address: &RemoteAddress, repo: &str, git_ref: &str) -> Result<(), SourceError> {
    use std::net::{TcpStream, ToSocketAddrs};
    let port = address.port.unwrap_or(if address.ssh {
        22
    } else if repo.starts_with("http://") {
        80
    } else {
        443
    });
    let unknown = || SourceError::UnknownHost { repo: repo.into(), git_ref: git_ref.into(), host: address.host.clone() };
    let addrs: Vec<_> = (address.host.as_str(), port).to_socket_addrs().map_err(|_| unknown())?.collect();
    if addrs.is_empty() {
        return Err(unknown());
    }
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            SourceError::Timeout { repo: repo.into(), git_ref: git_ref.into(), ssh: address.ssh, silent: None }
        }
        Some(e) => SourceError::Unreachable { repo: repo.into(), git_ref: git_ref.into(), why: format!("{}:{port}: {e}", address.host) },
        None => unknown(),
    })
}

/// Opens (or creates) the mirror of `repository` and takes its lock.
fn open_mirror(repository: &str, shown: &str, mirrors: &Path, wait: Duration) -> Result<Mirror, SourceError> {
    let fail = |why: String| SourceError::Workspace { path: mirrors.display().to_string(), why };
    std::fs::create_dir_all(mirrors).map_err(|e| fail(e.to_string()))?;
    let name = hex::encode(&Sha256::digest(repository.as_bytes())[..12]);
    let path = mirrors.join(format!("{name}.git"));
    let lock = File::create(mirrors.join(format!("{name}.lock"))).map_err(|e| fail(e.to_string()))?;
    let waited = Instant::now();
    let path = loop {
        match lock.try_lock() {
            Ok(()) => break path,
            Err(std::fs::TryLockError::WouldBlock) if waited.elapsed() < wait => std::thread::sleep(Duration::from_millis(50)),
            // Still busy: an abandoned fetch may hold it until its
            // connection dies. This fetch gets a mirror of its own, which
            // nobody else locks, and removes it again.
            Err(std::fs::TryLockError::WouldBlock) => {
                let own = mirrors.join(format!("{name}-{}.once", uuid::Uuid::now_v7().simple()));
                let repo = Repository::init_bare(&own).map_err(|e| fail(e.message().into()))?;
                return Ok(Mirror { repo, lock, once: Some(own) });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(fail(format!("locking the mirror of {shown}: {e}"))),
        }
    };
    let mut repo = match Repository::open_bare(&path) {
        Ok(repo) => repo,
        Err(_) => {
            // A half-made mirror (a crash during the first fetch) is made again.
            let _ = std::fs::remove_dir_all(&path);
            Repository::init_bare(&path).map_err(|e| fail(e.message().into()))?
        }
    };
    match repack(&repo) {
        // Opened again, so nothing of the old packs stays cached.
        Ok(true) => repo = Repository::open_bare(&path).map_err(|e| fail(e.message().into()))?,
        Ok(false) => {}
        Err(e) => tracing::warn!(mirror = %path.display(), error = %e.message(), "could not repack a git mirror; its packs stay"),
    }
    for removed in sweep(mirrors, &name, std::time::SystemTime::now()) {
        tracing::info!(mirror = %removed.display(), "removed a git mirror no fetch has used for 30 days");
    }
    Ok(Mirror { repo, lock, once: None })
}

/// Folds a mirror's packs into one once it has [`REPACK_AT`] or more
/// (libgit2 writes a pack per fetch, and has no `git gc`); true if it did.
/// Every object the mirror's refs reach (their commits, trees and blobs,
/// and annotated tags) goes into one new pack, which is written before
/// the old packs and loose objects are removed, so a failure leaves the
/// mirror as it was. It runs under the mirror's lock, so no fetch reads
/// the mirror meanwhile, and workspaces keep the packs they hard-linked.
/// An object no ref reaches (a commit once fetched by its SHA) is dropped
/// and fetched again if asked for again.
fn repack(repo: &Repository) -> Result<bool, git2::Error> {
    let objects = repo.path().join("objects");
    let pack_dir = objects.join("pack");
    let old: Vec<PathBuf> = std::fs::read_dir(&pack_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pack"))
        .collect();
    if old.len() < REPACK_AT {
        return Ok(false);
    }
    let mut builder = repo.packbuilder()?;
    let mut walk = repo.revwalk()?;
    walk.push_glob("*")?;
    builder.insert_walk(&mut walk)?;
    for reference in repo.references_glob("refs/tags/*")?.flatten() {
        if let Some(tag) = reference.target().and_then(|oid| repo.find_tag(oid).ok()) {
            builder.insert_object(tag.id(), None)?;
        }
    }
    builder.write(&pack_dir, 0)?;
    let Some(name) = builder.name()?.map(str::to_string) else { return Ok(false) };
    for pack in old.iter().filter(|p| !p.to_string_lossy().contains(&name)) {
        for extension in ["pack", "idx", "rev", "keep"] {
            let _ = std::fs::remove_file(pack.with_extension(extension));
        }
    }
    // Loose objects: two-hex-digit directories beside `pack`.
    for entry in std::fs::read_dir(&objects).into_iter().flatten().flatten() {
        let file = entry.file_name();
        if file.len() == 2 && file.to_string_lossy().bytes().all(|b| b.is_ascii_hexdigit()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    Ok(true)
}

/// Removes, under `mirrors`, every mirror other than `keep` whose lock file
/// (rewritten by each fetch that opens the mirror) is older than
/// `MIRROR_IDLE`, and every one-off mirror older than `ONCE_LEFT_AFTER`.
/// A mirror is removed only while its lock is held here, so never under a
/// fetch; its lock file stays (a new lock file beside a still-open one
/// would let two fetches hold "the" lock). Returns what it removed; what it
/// cannot read or remove it leaves for the next sweep.
fn sweep(mirrors: &Path, keep: &str, now: std::time::SystemTime) -> Vec<PathBuf> {
    let age = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok().and_then(|t| now.duration_since(t).ok());
    let Ok(entries) = std::fs::read_dir(mirrors) else { return Vec::new() };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        if let Some(name) = file.strip_suffix(".lock").filter(|name| *name != keep) {
            let mirror = mirrors.join(format!("{name}.git"));
            if !mirror.exists() || age(&path).is_none_or(|a| a < MIRROR_IDLE) {
                continue;
            }
            // Opened without truncating: that would count as a use.
            let Ok(lock) = File::open(&path) else { continue };
            if lock.try_lock().is_ok() && std::fs::remove_dir_all(&mirror).is_ok() {
                removed.push(mirror);
            }
        } else if file.ends_with(".once") && age(&path).is_some_and(|a| a >= ONCE_LEFT_AFTER) && std::fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    removed
}

/// The callbacks of every network operation (fetch, branch listing,
/// submodules); over HTTP(S), libgit2's HTTP client is tuned first. Each
/// callback sets `heard`: the server has said something.
fn callbacks<'a>(
    address: &'a RemoteAddress,
    access: &'a Access,
    observed: &'a RefCell<Observed>,
    heard: &'a AtomicBool,
) -> RemoteCallbacks<'a> {
    if !address.ssh {
        super::git_http::tune();
    }
    let mut callbacks = RemoteCallbacks::new();
    let mut offered = 0u32;
    let heard = || heard.store(true, Ordering::Relaxed);
    callbacks.sideband_progress(move |_| {
        heard();
        true
    });
    callbacks.credentials(move |_url, user_in_url, allowed| {
        heard();
        let refuse = |message: &str| Err(git2::Error::from_str(message));
        if offered > 0 {
            // libgit2 asks again when the server refused what it was given.
            observed.borrow_mut().credentials_refused = true;
            return refuse("the server refused the credentials");
        }
        if allowed.contains(CredentialType::SSH_KEY) {
            if let Some(key) = &access.ssh_key {
                offered += 1;
                return Cred::ssh_key_from_memory(user_in_url.unwrap_or("git"), None, key, access.ssh_key_passphrase.as_deref());
            }
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            let user = access.username.as_deref().or(user_in_url);
            if let Some(token) = &access.token {
                offered += 1;
                return Cred::userpass_plaintext(user.unwrap_or("x-access-token"), token);
            }
            if let (Some(user), Some(password)) = (user, &access.password) {
                offered += 1;
                return Cred::userpass_plaintext(user, password);
            }
        }
        if allowed.contains(CredentialType::USERNAME) {
            return Cred::username(user_in_url.or(access.username.as_deref()).unwrap_or("git"));
        }
        observed.borrow_mut().credentials_missing = true;
        refuse("the server wants credentials this project does not have")
    });
    callbacks.certificate_check(move |cert, host| {
        heard();
        if let Some(hostkey) = cert.as_hostkey() {
            return check_host_key(hostkey, address, access, observed);
        }
        match (cert.as_x509(), &access.ca_cert) {
            (Some(x509), Some(ca)) => match trusted_by(x509.data(), ca, host) {
                Ok(true) => Ok(CertificateCheckStatus::CertificateOk),
                // Not signed by the project's CA: the system's bundle decides.
                Ok(false) => Ok(CertificateCheckStatus::CertificatePassthrough),
                Err(why) => {
                    observed.borrow_mut().ca_problem = Some(why);
                    Ok(CertificateCheckStatus::CertificatePassthrough)
                }
            },
            _ => Ok(CertificateCheckStatus::CertificatePassthrough),
        }
    });
    let started = Instant::now();
    let deadline = access.deadline();
    callbacks.transfer_progress(move |_| {
        heard();
        let late = started.elapsed() > deadline;
        if late {
            observed.borrow_mut().timed_out = true;
        }
        !late
    });
    callbacks
}

fn check_host_key(
    hostkey: &git2::cert::CertHostkey<'_>,
    address: &RemoteAddress,
    access: &Access,
    observed: &RefCell<Observed>,
) -> Result<CertificateCheckStatus, git2::Error> {
    let (Some(raw), Some(kind)) = (hostkey.hostkey(), hostkey.hostkey_type()) else {
        return Err(git2::Error::from_str("the SSH server's host key could not be read"));
    };
    let field = address.known_host_field();
    let met = format!("{field} {} {}", kind.name(), base64::engine::general_purpose::STANDARD.encode(raw));
    let trusted: Vec<&String> = trusted_for(&access.known_hosts, &field).collect();
    if trusted.is_empty() {
        observed.borrow_mut().met_host_key = Some(met);
        return Ok(CertificateCheckStatus::CertificateOk);
    }
    if trusted.iter().any(|line| same_host_key(line, &met)) {
        return Ok(CertificateCheckStatus::CertificateOk);
    }
    observed.borrow_mut().refused_host_key = Some(met);
    Err(git2::Error::from_str("the SSH host key is not the trusted one"))
}

/// Whether the server's certificate (DER) was issued by the project's CA
/// (PEM) for `host` (a name or an IP address).
fn trusted_by(leaf_der: &[u8], ca_pem: &str, host: &str) -> Result<bool, String> {
    use openssl::stack::Stack;
    use openssl::x509::store::X509StoreBuilder;
    use openssl::x509::verify::X509VerifyParam;
    use openssl::x509::{X509StoreContext, X509};
    let leaf = X509::from_der(leaf_der).map_err(|e| format!("the server's certificate cannot be read: {e}"))?;
    let cas = X509::stack_from_pem(ca_pem.as_bytes()).map_err(|e| format!("the project's CA certificate cannot be read: {e}"))?;
    let mut store = X509StoreBuilder::new().map_err(|e| e.to_string())?;
    for ca in cas {
        store.add_cert(ca).map_err(|e| e.to_string())?;
    }
    let mut param = X509VerifyParam::new().map_err(|e| e.to_string())?;
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => param.set_ip(ip),
        Err(_) => param.set_host(host),
    }
    .map_err(|e| e.to_string())?;
    store.set_param(&param).map_err(|e| e.to_string())?;
    let store = store.build();
    let chain = Stack::new().map_err(|e| e.to_string())?;
    let mut context = X509StoreContext::new().map_err(|e| e.to_string())?;
    context.init(&store, &leaf, &chain, |c| c.verify_cert()).map_err(|e| e.to_string())
}

/// Checks out the submodules of the fresh checkout `repo`, recursively,
/// with the project's access (their hosts' keys are checked as the main
/// repository's). Relative submodule URLs resolve against `repository`,
/// which becomes the checkout's `origin`.
pub fn update_submodules(repo: &Repository, repository: &str, git_ref: &str, access: &Access) -> Result<(), SourceError> {
    let shown = super::git::shown_repository(repository);
    let fail = |why: String| SourceError::Fetch { repo: shown.clone(), why: format!("submodules: {why}") };
    if repo.find_remote("origin").is_err() {
        repo.remote("origin", repository).map_err(|e| fail(e.message().into()))?;
    }
    for mut submodule in repo.submodules().map_err(|e| fail(e.message().into()))? {
        let url = submodule.url().ok().flatten().unwrap_or_default().to_string();
        let resolved = if url.starts_with("../") || url.starts_with("./") { repository.to_string() } else { url.clone() };
        let observed = RefCell::new(Observed::default());
        let address = remote_address(&resolved).unwrap_or(RemoteAddress { ssh: false, host: String::new(), port: None });
        // Nothing watches a submodule's silence; its callbacks stop a
        // transfer past the access's deadline.
        let heard = AtomicBool::new(false);
        let mut fetch = FetchOptions::new();
        if remote_address(&resolved).is_some() {
            probe(&address, &super::git::shown_repository(&resolved), git_ref)?;
            fetch.remote_callbacks(callbacks(&address, access, &observed, &heard));
        }
        let mut options = git2::SubmoduleUpdateOptions::new();
        options.fetch(fetch);
        let name = submodule.name().unwrap_or("?").to_string();
        let updated = submodule.update(true, Some(&mut options));
        drop(options);
        if let Err(e) = updated {
            let sub_shown = super::git::shown_repository(&url);
            return Err(match classify(&e, &observed.borrow(), &address, &sub_shown, git_ref, access) {
                SourceError::Fetch { why, .. } => fail(format!("`{name}` ({sub_shown}): {why}")),
                other => other,
            });
        }
        let nested = submodule.open().map_err(|e| fail(format!("`{name}`: {}", e.message())))?;
        let nested_url = if url.starts_with("../") || url.starts_with("./") { repository.to_string() } else { url };
        update_submodules(&nested, &nested_url, git_ref, access)?;
    }
    Ok(())
}

/// A failed fetch as a reason that names the repository, the ref and what to do.
fn classify(e: &git2::Error, observed: &Observed, address: &RemoteAddress, shown: &str, git_ref: &str, access: &Access) -> SourceError {
    let repo = shown.to_string();
    let git_ref = git_ref.to_string();
    let message = e.message().to_lowercase();
    if let Some(met) = &observed.refused_host_key {
        return SourceError::HostKeyChanged { repo, git_ref, met: met.clone() };
    }
    if address.ssh && access.ssh_key.is_some() && (message.contains("passphrase") || message.contains("unable to extract public key")) {
        // libssh2 could not read the key: a wrong passphrase, or a form it does not know.
        return SourceError::LockedSshKey { repo, git_ref, passphrase_given: access.ssh_key_passphrase.is_some() };
    }
    if observed.credentials_refused || (e.code() == git2::ErrorCode::Auth && access.has_credentials()) {
        return SourceError::BadCredentials { repo, git_ref, ssh: address.ssh };
    }
    if observed.credentials_missing || e.code() == git2::ErrorCode::Auth {
        return SourceError::NoCredentials { repo, git_ref, ssh: address.ssh };
    }
    if e.code() == git2::ErrorCode::Certificate || message.contains("certificate") {
        let ca = observed.ca_problem.clone().unwrap_or_default();
        return SourceError::UntrustedCertificate { repo, git_ref, why: format!("{}{ca}", e.message()) };
    }
    if observed.timed_out || message.contains("timed out") || message.contains("timeout") {
        return SourceError::Timeout { repo, git_ref, ssh: address.ssh, silent: None };
    }
    if message.contains("resolve") {
        return SourceError::UnknownHost { repo, git_ref, host: address.host.clone() };
    }
    if message.contains("refused") || message.contains("unreachable") {
        return SourceError::Unreachable { repo, git_ref, why: e.message().into() };
    }
    if message.contains("not our ref") || message.contains("no such") || message.contains("want") {
        return SourceError::RefNotFound { git_ref, repo };
    }
    if !address.ssh && message.contains("status code: 417") {
        let why = format!(
            "{} (the server, or a proxy on the way, refuses `Expect: 100-continue`: set {}=off on the workers)",
            e.message(),
            super::git_http::EXPECT_CONTINUE_VAR
        );
        return SourceError::Fetch { repo, why };
    }
    SourceError::Fetch { repo, why: e.message().into() }
}

/// Whether a private key's text is encrypted (needs a passphrase): the
/// OpenSSH form names its cipher (`none` when plain); PEM says so in its
/// label (PKCS#8) or its `Proc-Type` header (traditional forms). Anything
/// unreadable counts as plain, and libssh2 reports it.
pub fn ssh_key_is_encrypted(key: &str) -> bool {
    use base64::Engine as _;
    if key.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") || key.contains("Proc-Type: 4,ENCRYPTED") {
        return true;
    }
    let Some(body) = key.split("-----BEGIN OPENSSH PRIVATE KEY-----").nth(1).and_then(|rest| rest.split("-----END").next()) else {
        return false;
    };
    let text: String = body.chars().filter(|c| !c.is_whitespace()).collect();
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(text) else {
        return false;
    };
    // "openssh-key-v1\0", then the cipher's name as an SSH string.
    let Some(rest) = bytes.strip_prefix(b"openssh-key-v1\0") else {
        return false;
    };
    let Some((length, rest)) = rest.split_first_chunk::<4>() else {
        return false;
    };
    let cipher = rest.get(..u32::from_be_bytes(*length) as usize);
    cipher.is_some_and(|name| name != b"none")
}

/// A new ed25519 deploy key: its private half (PKCS#8 PEM, what libssh2
/// reads) and its public half as an OpenSSH line to paste into the git
/// host (`ssh-ed25519 BASE64 comment`).
pub fn generate_deploy_key(comment: &str) -> Result<(String, String), String> {
    let key = openssl::pkey::PKey::generate_ed25519().map_err(|e| format!("cannot make a key: {e}"))?;
    let private = key.private_key_to_pem_pkcs8().map_err(|e| format!("cannot encode the key: {e}"))?;
    let raw = key.raw_public_key().map_err(|e| format!("cannot encode the key: {e}"))?;
    // The SSH wire form: string "ssh-ed25519", string key.
    let mut blob = Vec::with_capacity(51);
    for part in [b"ssh-ed25519".as_slice(), raw.as_slice()] {
        blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
        blob.extend_from_slice(part);
    }
    let public = format!("ssh-ed25519 {} {comment}", base64::engine::general_purpose::STANDARD.encode(blob));
    let private = String::from_utf8(private).map_err(|e| format!("cannot encode the key: {e}"))?;
    Ok((private, public))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_of_many_packs_is_folded_into_one_with_everything_its_refs_reach() {
        let dir = tempfile::tempdir().unwrap();
        let source = Repository::init(dir.path().join("source")).unwrap();
        let signature = git2::Signature::now("t", "t@example.org").unwrap();
        let mirror = Repository::init_bare(dir.path().join("mirror.git")).unwrap();
        let url = format!("file://{}", dir.path().join("source").display());
        let mut commits = Vec::new();
        for i in 0..REPACK_AT {
            let blob = source.blob(format!("version {i}\n").as_bytes()).unwrap();
            let mut tree = source.treebuilder(None).unwrap();
            tree.insert("file.txt", blob, 0o100644).unwrap();
            let tree = source.find_tree(tree.write().unwrap()).unwrap();
            let parents: Vec<git2::Commit> = commits.last().map(|c| source.find_commit(*c).unwrap()).into_iter().collect();
            let parents: Vec<&git2::Commit> = parents.iter().collect();
            let commit = source.commit(Some("refs/heads/main"), &signature, &signature, &format!("v{i}"), &tree, &parents).unwrap();
            commits.push(commit);
            if i == 3 {
                let target = source.find_object(commit, None).unwrap();
                source.tag("v3", &target, &signature, "an annotated tag", false).unwrap();
            }
            // One fetch per commit: a pack each, as a worker's fetches leave.
            let refspecs = ["+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"];
            mirror.remote_anonymous(&url).unwrap().fetch(&refspecs, None, None).unwrap();
        }
        let pack_dir = mirror.path().join("objects/pack");
        let count =
            |ext: &str| std::fs::read_dir(&pack_dir).unwrap().flatten().filter(|e| e.path().extension().is_some_and(|x| x == ext)).count();
        assert_eq!(count("pack"), REPACK_AT, "the local transport writes a pack per fetch");
        assert!(repack(&mirror).unwrap());
        assert_eq!((count("pack"), count("idx")), (1, 1));
        let mirror = Repository::open_bare(mirror.path()).unwrap();
        for (i, commit) in commits.iter().enumerate() {
            let tree = mirror.find_commit(*commit).unwrap().tree().unwrap();
            let blob = mirror.find_blob(tree.get_name("file.txt").unwrap().id()).unwrap();
            assert_eq!(blob.content(), format!("version {i}\n").as_bytes());
        }
        let tag = mirror.find_reference("refs/tags/v3").unwrap().target().unwrap();
        assert_eq!(mirror.find_tag(tag).unwrap().target_id(), commits[3]);
        // Below the threshold nothing happens.
        assert!(!repack(&mirror).unwrap());
    }

    #[test]
    fn encrypted_keys_are_told_from_plain_ones_by_their_text() {
        use base64::Engine as _;
        let openssh = |cipher: &str| {
            let mut blob = b"openssh-key-v1\0".to_vec();
            blob.extend_from_slice(&(cipher.len() as u32).to_be_bytes());
            blob.extend_from_slice(cipher.as_bytes());
            blob.extend_from_slice(b"\0\0\0\x06bcrypt");
            let text = base64::engine::general_purpose::STANDARD.encode(blob);
            let (first, second) = text.split_at(20);
            format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{first}\n{second}\n-----END OPENSSH PRIVATE KEY-----\n")
        };
        assert!(ssh_key_is_encrypted(&openssh("aes256-ctr")));
        assert!(!ssh_key_is_encrypted(&openssh("none")));
        assert!(ssh_key_is_encrypted("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n"));
        assert!(ssh_key_is_encrypted(
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nMIIB\n-----END RSA PRIVATE KEY-----\n"
        ));
        let (generated, _) = generate_deploy_key("t").unwrap();
        assert!(!ssh_key_is_encrypted(&generated));
        // Unreadable text is left to libssh2 to report.
        assert!(!ssh_key_is_encrypted("-----BEGIN OPENSSH PRIVATE KEY-----\n!!!\n-----END OPENSSH PRIVATE KEY-----\n"));
        assert!(!ssh_key_is_encrypted(&openssh("aes256-ctr")[..60]));
    }

    #[test]
    fn mirrors_unused_for_30_days_and_left_one_off_mirrors_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let now = std::time::SystemTime::now();
        let long_ago = now - MIRROR_IDLE - Duration::from_secs(60);
        let mirror = |name: &str, used: std::time::SystemTime| {
            std::fs::create_dir_all(dir.path().join(format!("{name}.git")).join("objects")).unwrap();
            let lock = File::create(dir.path().join(format!("{name}.lock"))).unwrap();
            lock.set_modified(used).unwrap();
            lock
        };
        mirror("idle", long_ago);
        mirror("recent", now - Duration::from_secs(3600));
        mirror("ours", long_ago);
        let busy = mirror("busy", long_ago);
        busy.lock().unwrap();
        let crashed = dir.path().join("idle-0190.once");
        std::fs::create_dir_all(&crashed).unwrap();
        File::open(&crashed).unwrap().set_modified(now - ONCE_LEFT_AFTER - Duration::from_secs(60)).unwrap();
        let running = dir.path().join("recent-0191.once");
        std::fs::create_dir_all(&running).unwrap();

        let mut removed = sweep(dir.path(), "ours", now);
        removed.sort();
        assert_eq!(removed, vec![dir.path().join("idle-0190.once"), dir.path().join("idle.git")]);
        for kept in ["recent.git", "ours.git", "busy.git", "recent-0191.once", "idle.lock"] {
            assert!(dir.path().join(kept).exists(), "{kept} was removed");
        }
        // Once the fetch holding it is done, an idle mirror goes too.
        busy.unlock().unwrap();
        assert_eq!(sweep(dir.path(), "ours", now), vec![dir.path().join("busy.git")]);
        // Opening a mirror (`File::create` on its lock) counts as a use.
        mirror("reused", long_ago);
        File::create(dir.path().join("reused.lock")).unwrap();
        assert!(sweep(dir.path(), "ours", std::time::SystemTime::now()).is_empty());
    }

    #[test]
    fn refspecs_fetch_one_ref_shallow_unless_an_abbreviation_needs_history() {
        assert_eq!(
            wanted("main"),
            (vec!["+refs/heads/main:refs/remotes/origin/main".into(), "+refs/tags/main:refs/tags/main".into()], Some(1))
        );
        assert_eq!(wanted("refs/tags/v1").0, vec!["+refs/tags/v1:refs/tags/v1".to_string()]);
        let sha = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(wanted(sha), (vec![format!("+{sha}:refs/slipway/commits/{sha}")], Some(1)));
        assert_eq!(wanted("abc1234").1, Some(UNSHALLOW));
        assert_eq!(wanted("HEAD").0, vec!["+HEAD:refs/remotes/origin/HEAD".to_string()]);
    }

    #[test]
    fn source_keys_are_not_environment_names() {
        assert!(is_source_key(&source_key("token")));
        assert!(!slipway_proto::config::is_env_name(&source_key("token")));
        assert!(!is_source_key("TOKEN"));
    }

    #[test]
    fn generated_keys_are_ed25519_in_both_forms() {
        let (private, public) = generate_deploy_key("slipway:shop").unwrap();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"), "{private}");
        let fields: Vec<&str> = public.split(' ').collect();
        assert_eq!((fields[0], fields[2]), ("ssh-ed25519", "slipway:shop"));
        assert_eq!(base64::engine::general_purpose::STANDARD.decode(fields[1]).unwrap().len(), 51);
        assert_ne!(generate_deploy_key("x").unwrap().0, private);
    }

    #[test]
    fn debug_shows_which_credentials_not_their_values() {
        let access = Access { token: Some("ghp_sentinel".into()), ..Access::default() };
        let shown = format!("{access:?}");
        assert!(shown.contains("token: true") && !shown.contains("ghp_sentinel"), "{shown}");
    }
}
