//! The app's source through git2, shared by the services check (which reads
//! `slipway.toml` at a ref before anything is checked out) and the checkout,
//! so that both accept the same repositories and refs, resolve a ref to the
//! same commit and fail with the same reasons. It owns: where a repository
//! is (a local path or file:// URL, read in place; or a network address,
//! fetched into a mirror by [`super::git_remote`]), which refs are safe to
//! hand to git, ref resolution, copying into a fresh repository, and
//! reading one file at a commit. git2 types stay in these two files;
//! callers see strings and paths.

use std::path::{Path, PathBuf};

use git2::build::CheckoutBuilder;
use git2::{ErrorCode, ObjectType, Oid, Repository, StatusOptions};

use super::check_services::{percent_decode, redact_url};
use super::git_remote::{self, Access};

/// Why a repository or a ref cannot be used. The text is the step's failure reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("no ref given; name a branch, tag or commit SHA")]
    EmptyRef,
    #[error("ref `{0}` looks like an option")]
    OptionLikeRef(String),
    #[error("ref `{git_ref}` is refused: it contains {what}")]
    UnsafeRef { git_ref: String, what: &'static str },
    #[error("repository `{0}`: file:// URLs name a local path; use https:// or ssh:// for another host")]
    UnsupportedTransport(String),
    #[error("{repo} refused the credentials for ref `{git_ref}`: {}", if *ssh { "add this project's deploy key (its public half; `slipway project show` prints it when Slipway made the key) to the repository, or set another with `slipway project source --ssh-key FILE`" } else { "check the token or password, and that it may read the repository; set another with `slipway project source --token-file FILE` (or `--username NAME --password-file FILE`)" })]
    BadCredentials { repo: String, git_ref: String, ssh: bool },
    #[error("the project's SSH deploy key for {repo} (fetching ref `{git_ref}`) {}", if *passphrase_given { "did not open with its passphrase: set the right one with `slipway project source --ssh-key-passphrase-file FILE`, or a key in a form libssh2 reads (OpenSSH or PEM)" } else { "is protected by a passphrase, and the project has none: give it with `slipway project source --ssh-key-passphrase-file FILE`" })]
    LockedSshKey { repo: String, git_ref: String, passphrase_given: bool },
    #[error("{repo} wants credentials to fetch ref `{git_ref}`, and the project has none: {}", if *ssh { "give a deploy key with `slipway project source --ssh-key FILE`" } else { "give a token with `slipway project source --token-file FILE`" })]
    NoCredentials { repo: String, git_ref: String, ssh: bool },
    #[error("the SSH host key of {repo} changed (fetching ref `{git_ref}`): it offered `{met}`, which the project does not trust. If the server's key was really replaced, trust the new one with `slipway project source --known-host LINE`; otherwise someone may be intercepting the connection")]
    HostKeyChanged { repo: String, git_ref: String, met: String },
    #[error("the TLS certificate of {repo} is not trusted (fetching ref `{git_ref}`): {why}. For a private git server, give its CA certificate with `slipway project source --ca-cert FILE`")]
    UntrustedCertificate { repo: String, git_ref: String, why: String },
    #[error("cannot fetch ref `{git_ref}` from {repo}: host `{host}` is unknown (DNS); check the repository address")]
    UnknownHost { repo: String, git_ref: String, host: String },
    #[error("cannot fetch ref `{git_ref}` from {repo}: {why}; check that the git server is up and reachable from the worker")]
    Unreachable { repo: String, git_ref: String, why: String },
    #[error("fetching ref `{git_ref}` from {repo} timed out{}", match silent {
        Some(seconds) => format!(": the server accepted the connection and said nothing for {seconds} s; check that the address is a git server's (SSH or HTTPS) and that it is up, then deploy again"),
        None => format!("; check the network between the worker and the git server{}, then deploy again", if *ssh { "" } else { " (over HTTPS, a server or proxy that never answers `Expect: 100-continue` also does this: set SLIPWAY_GIT_EXPECT_CONTINUE=off on the workers)" }),
    })]
    Timeout { repo: String, git_ref: String, ssh: bool, silent: Option<u64> },
    #[error("cannot open repository {repo}: {why}")]
    CannotOpen { repo: String, why: String },
    #[error("ref `{git_ref}` not found in {repo}: deploy a branch, tag or commit it has (`--ref`; the project's branch by default)")]
    RefNotFound { git_ref: String, repo: String },
    #[error("ref `{git_ref}` is ambiguous in {repo}: several objects start with it; give more of the SHA")]
    AmbiguousRef { git_ref: String, repo: String },
    #[error("ref `{git_ref}` in {repo} does not point to a commit")]
    NotACommit { git_ref: String, repo: String },
    #[error("cannot fetch {repo}: {why}")]
    Fetch { repo: String, why: String },
    #[error("cannot read repository {repo}: {why}")]
    Read { repo: String, why: String },
    #[error("{file} at commit {commit}: {why}")]
    BadFile { file: String, commit: String, why: String },
    #[error("cannot prepare the checkout in {path}: {why}")]
    Workspace { path: String, why: String },
}

/// A bigger `slipway.toml` is a mistake (or an attack on the worker's memory).
const MAX_FILE_BYTES: usize = 1 << 20;

/// Git's mode for a symbolic link in a tree.
const SYMLINK_MODE: i32 = 0o120000;

/// Refuses refs that could change what git does rather than name a commit:
/// an option (`--upload-pack=...`), a range (`a..b`), or text that could
/// forge lines in logs and messages (control characters, whitespace).
/// Runs before any repository is touched.
pub fn validate_ref(git_ref: &str) -> Result<(), SourceError> {
    // Shown escaped, so a refused ref cannot inject control characters into the reason.
    let shown = || git_ref.escape_debug().to_string();
    if git_ref.is_empty() {
        return Err(SourceError::EmptyRef);
    }
    if git_ref.starts_with('-') {
        return Err(SourceError::OptionLikeRef(shown()));
    }
    let what = if git_ref.chars().any(char::is_control) {
        "a control character"
    } else if git_ref.chars().any(char::is_whitespace) {
        "whitespace"
    } else if git_ref.contains("..") {
        "`..` (a range names many commits; name one)"
    } else {
        return Ok(());
    };
    Err(SourceError::UnsafeRef { git_ref: shown(), what })
}

/// Where a repository is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A local path (as given, or from a `file://` URL), read in place.
    Local(PathBuf),
    /// A network address, fetched into a mirror.
    Remote,
}

/// Where `repository` is: a local path, or a network address.
pub fn locate(repository: &str) -> Result<Location, SourceError> {
    match slipway_core::remote::remote_address(repository) {
        Some(_) => Ok(Location::Remote),
        None => source_path(repository).map(Location::Local),
    }
}

/// The local path a repository address names: a path as given, or the path
/// of a `file://` URL. A network address is refused here (see [`locate`]).
fn source_path(repository: &str) -> Result<PathBuf, SourceError> {
    let unsupported = || SourceError::UnsupportedTransport(shown_repository(repository));
    if repository.is_empty() {
        return Err(SourceError::CannotOpen { repo: "``".into(), why: "no repository given".into() });
    }
    if let Some(rest) = repository.strip_prefix("file://") {
        // file:///path or file://localhost/path; another host would need a network.
        let slash = rest.find('/').unwrap_or(rest.len());
        if !matches!(&rest[..slash], "" | "localhost") {
            return Err(unsupported());
        }
        let path = percent_decode(&rest[slash..]).ok_or_else(|| SourceError::CannotOpen {
            repo: shown_repository(repository),
            why: "the file:// URL has a malformed %-escape or is not UTF-8".into(),
        })?;
        return Ok(PathBuf::from(path));
    }
    // `https://...`, `ssh://...`, and git's scp-like `user@host:path` (a colon
    // before the first slash).
    let first_segment = repository.split('/').next().unwrap_or_default();
    if repository.contains("://") || first_segment.contains(':') {
        return Err(unsupported());
    }
    Ok(PathBuf::from(repository))
}

/// A repository address as it may appear in an event: no credentials, even
/// a token in the user part of an https URL.
pub fn shown_repository(repository: &str) -> String {
    let redacted = redact_url(repository);
    let Some(scheme_end) = redacted.find("://") else { return redacted };
    let rest = &redacted[scheme_end + 3..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    match authority.rfind('@') {
        // An SSH login name is no secret (`git@`), and a login problem is
        // hard to see without it; an ssh:// URL with a password is refused.
        Some(at) if redacted.starts_with("ssh://") && !authority[..at].contains(':') => redacted,
        Some(at) => format!("{}***{}", &redacted[..scheme_end + 3], &rest[at..]),
        None => redacted,
    }
}

/// Where a ref's names live: in the source repository itself, or in a
/// repository that fetched from it (branches under `refs/remotes/origin/`).
#[derive(Debug, Clone, Copy)]
struct Layout {
    head: &'static str,
    branches: &'static str,
}

const SOURCE: Layout = Layout { head: "HEAD", branches: "refs/heads/" };
const FETCHED: Layout = Layout { head: "refs/remotes/origin/HEAD", branches: "refs/remotes/origin/" };

/// What reading a repository met that the worker reports: the SSH host
/// key accepted on first use, if any.
pub type MetHostKey = Option<String>;

/// A repository ready to read: a local one in place, or this worker's
/// mirror of a network one (locked while this lives), with the layout its
/// refs are in.
struct Opened {
    source: Source,
    layout: Layout,
    met_host_key: MetHostKey,
}

enum Source {
    Local(Repository),
    Mirror(git_remote::Mirror),
}

impl Opened {
    fn repo(&self) -> &Repository {
        match &self.source {
            Source::Local(repo) => repo,
            Source::Mirror(mirror) => &mirror.repo,
        }
    }
}

/// Opens a local repository, or fetches what `git_ref` needs of a network
/// one into the mirror.
fn open_for(repository: &str, git_ref: &str, access: &Access) -> Result<Opened, SourceError> {
    match locate(repository)? {
        Location::Local(path) => {
            // `open` never searches parent directories, so a plain directory
            // inside some other repository is not mistaken for the app's.
            let repo = Repository::open(&path)
                .map_err(|e| SourceError::CannotOpen { repo: shown_repository(repository), why: e.message().into() })?;
            Ok(Opened { source: Source::Local(repo), layout: SOURCE, met_host_key: None })
        }
        Location::Remote => {
            let fetched = git_remote::fetch(repository, &shown_repository(repository), git_ref, access)?;
            Ok(Opened { layout: FETCHED, met_host_key: fetched.met_host_key, source: Source::Mirror(fetched.mirror) })
        }
    }
}

/// Reads `file` at `git_ref` without a working tree: from a local
/// repository in place, or from the mirror after fetching the ref. `None`
/// when the commit has no such file.
pub fn peek_file(repository: &str, git_ref: &str, file: &str, access: &Access) -> Result<(Option<String>, MetHostKey), SourceError> {
    validate_ref(git_ref)?;
    let source = open_for(repository, git_ref, access)?;
    let commit = resolve(source.repo(), source.layout, git_ref, &shown_repository(repository))?;
    Ok((read_file_at(source.repo(), commit, file)?, source.met_host_key))
}

/// Copies `repository` (a local one, or the mirror of a network one) into
/// a new repository at `dest` and checks out the commit `git_ref` names
/// there, detached, with submodules if the project wants them. Returns the
/// commit SHA. HEAD is set last, so a repository whose HEAD is detached on
/// a commit has a complete working tree (see [`completed_checkout`]).
pub fn fresh_checkout(repository: &str, git_ref: &str, dest: &Path, access: &Access) -> Result<(String, MetHostKey), SourceError> {
    validate_ref(git_ref)?;
    let shown = shown_repository(repository);
    let source = open_for(repository, git_ref, access)?;
    let workspace_error = |e: git2::Error| SourceError::Workspace { path: dest.display().to_string(), why: e.message().into() };
    let repo = Repository::init(dest).map_err(workspace_error)?;
    fetch_everything(&repo, source.repo(), source.layout, &shown)?;
    let commit = resolve(&repo, FETCHED, git_ref, &shown)?;
    let tree = repo.find_commit(commit).and_then(|c| c.tree()).map_err(workspace_error)?;
    repo.checkout_tree(tree.as_object(), Some(CheckoutBuilder::new().force())).map_err(workspace_error)?;
    if access.submodules {
        git_remote::update_submodules(&repo, repository, git_ref, access)?;
    }
    repo.set_head_detached(commit).map_err(workspace_error)?;
    Ok((commit.to_string(), source.met_host_key))
}

/// The commit of an earlier, complete and untouched checkout of `git_ref` in
/// `workspace`, if there is one. A redelivered command re-uses it instead of
/// fetching again, so a branch that moved in between cannot make the
/// workspace disagree with the commit the first attempt may have recorded.
/// The ref is resolved against the refs that checkout fetched, never the source.
pub fn completed_checkout(workspace: &Path, git_ref: &str) -> Option<String> {
    let repo = Repository::open(workspace).ok()?;
    if !repo.head_detached().ok()? {
        return None;
    }
    let head = repo.head().ok()?.target()?;
    let wanted = resolve(&repo, FETCHED, git_ref, "the workspace").ok()?;
    (head == wanted && is_pristine(&repo)).then(|| head.to_string())
}

/// Reads `file` at `commit` from the repository in `workspace` (from the
/// commit's tree, not the working tree: a symlinked `slipway.toml` must not
/// make the worker read a file outside the checkout).
pub fn read_file_in_checkout(workspace: &Path, commit: &str, file: &str) -> Result<Option<String>, SourceError> {
    let workspace_error = |why: String| SourceError::Workspace { path: workspace.display().to_string(), why };
    let repo = Repository::open(workspace).map_err(|e| workspace_error(e.message().into()))?;
    let oid = Oid::from_str(commit).map_err(|e| workspace_error(e.message().into()))?;
    read_file_at(&repo, oid, file)
}

/// Takes every object and ref of a local repository (the source itself, or
/// a mirror), as `git clone --local` does: object files are hard-linked
/// (copied across filesystems), never re-packed. libgit2's local fetch
/// compresses a new pack instead, which cost about 200 ms for a repository
/// holding a 2 MB binary. Refs land where a fetch would put them: branches
/// under `refs/remotes/origin/`, tags under `refs/tags/`, HEAD as
/// `refs/remotes/origin/HEAD` (skipped while unborn). A shallow mirror's
/// list of cut-off commits comes along, so git knows their parents are
/// missing on purpose.
fn fetch_everything(repo: &Repository, source: &Repository, layout: Layout, shown: &str) -> Result<(), SourceError> {
    let fetch_error = |why: String| SourceError::Fetch { repo: shown.into(), why };
    link_tree(&source.path().join("objects"), &repo.path().join("objects")).map_err(|e| fetch_error(format!("copying objects: {e}")))?;
    match std::fs::copy(source.path().join("shallow"), repo.path().join("shallow")) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(fetch_error(format!("copying the shallow list: {e}"))),
        _ => {}
    }
    let refs = source.references().map_err(|e| fetch_error(e.message().into()))?;
    for reference in refs.flatten() {
        let (Ok(name), Ok(resolved)) = (reference.name(), reference.resolve()) else { continue };
        let Some(oid) = resolved.target() else { continue };
        let local = if let Some(branch) = name.strip_prefix(layout.branches).filter(|b| *b != "HEAD") {
            format!("refs/remotes/origin/{branch}")
        } else if name.starts_with("refs/tags/") {
            name.to_string()
        } else {
            continue;
        };
        repo.reference(&local, oid, true, "slipway: fetched").map_err(|e| fetch_error(e.message().into()))?;
    }
    let head = source.find_reference(layout.head).ok().and_then(|h| h.resolve().ok()).and_then(|h| h.target());
    if let Some(oid) = head {
        repo.reference(FETCHED.head, oid, true, "slipway: fetched").map_err(|e| fetch_error(e.message().into()))?;
    }
    Ok(())
}

/// Hard-links (or copies) every file under `from` into `to`, keeping the layout.
fn link_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type()?.is_dir() {
            link_tree(&src, &dst)?;
        } else if !dst.exists() && std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// Resolves `git_ref` as git would for a checkout, but only through names
/// (never rev-parse syntax such as `main~1` or `:/text`): HEAD, a branch, a
/// tag, `refs/heads/...` or `refs/tags/...`, then a full or abbreviated SHA.
fn resolve(repo: &Repository, layout: Layout, git_ref: &str, shown: &str) -> Result<Oid, SourceError> {
    let not_found = || SourceError::RefNotFound { git_ref: git_ref.into(), repo: shown.into() };
    let not_a_commit = || SourceError::NotACommit { git_ref: git_ref.into(), repo: shown.into() };
    // libgit2 reports a failed peel (a tag of a tree, say) in the Object
    // class, and an unborn HEAD or a missing object as NotFound.
    let classify = |e: git2::Error| match (e.class(), e.code()) {
        (git2::ErrorClass::Object, _) => not_a_commit(),
        (_, ErrorCode::NotFound | ErrorCode::UnbornBranch | ErrorCode::InvalidSpec) => not_found(),
        (_, ErrorCode::Ambiguous) => SourceError::AmbiguousRef { git_ref: git_ref.into(), repo: shown.into() },
        _ => SourceError::Read { repo: shown.into(), why: e.message().into() },
    };
    for name in candidate_names(layout, git_ref) {
        match repo.find_reference(&name) {
            Ok(reference) => return reference.peel_to_commit().map(|c| c.id()).map_err(classify),
            Err(e) if matches!(e.code(), ErrorCode::NotFound | ErrorCode::InvalidSpec) => continue,
            Err(e) => return Err(classify(e)),
        }
    }
    if !is_sha_prefix(git_ref) {
        return Err(not_found());
    }
    let object = if git_ref.len() == 40 {
        Oid::from_str(git_ref).and_then(|oid| repo.find_object(oid, None))
    } else {
        repo.find_object_by_prefix(git_ref, None)
    };
    // Peeling lets the SHA of an annotated tag name its commit, as in git.
    object.and_then(|o| o.peel_to_commit()).map(|c| c.id()).map_err(classify)
}

fn candidate_names(layout: Layout, git_ref: &str) -> Vec<String> {
    if git_ref == "HEAD" {
        vec![layout.head.into()]
    } else if let Some(branch) = git_ref.strip_prefix("refs/heads/") {
        vec![format!("{}{branch}", layout.branches)]
    } else if git_ref.starts_with("refs/tags/") {
        vec![git_ref.into()]
    } else {
        // A branch wins over a tag of the same name, as in `git checkout`.
        vec![format!("{}{git_ref}", layout.branches), format!("refs/tags/{git_ref}")]
    }
}

/// Git accepts abbreviations of four hex digits and more.
fn is_sha_prefix(text: &str) -> bool {
    (4..=40).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// True when the working tree matches HEAD exactly: nothing modified, added,
/// untracked or ignored, as in a fresh checkout.
fn is_pristine(repo: &Repository) -> bool {
    let mut options = StatusOptions::new();
    options.include_untracked(true).include_ignored(true);
    repo.statuses(Some(&mut options)).map(|s| s.is_empty()).unwrap_or(false)
}

fn read_file_at(repo: &Repository, commit: Oid, file: &str) -> Result<Option<String>, SourceError> {
    let bad = |why: String| SourceError::BadFile { file: file.into(), commit: commit.to_string(), why };
    let tree = repo.find_commit(commit).and_then(|c| c.tree()).map_err(|e| bad(e.message().into()))?;
    let Some(entry) = tree.get_name(file) else { return Ok(None) };
    if entry.kind() != Some(ObjectType::Blob) {
        return Err(bad("is not a regular file".into()));
    }
    if entry.filemode() == SYMLINK_MODE {
        return Err(bad("is a symbolic link; Slipway reads it only as a regular file".into()));
    }
    let blob = repo.find_blob(entry.id()).map_err(|e| bad(e.message().into()))?;
    if blob.size() > MAX_FILE_BYTES {
        return Err(bad(format!("is {} bytes; the limit is {MAX_FILE_BYTES}", blob.size())));
    }
    String::from_utf8(blob.content().to_vec()).map(Some).map_err(|_| bad("is not UTF-8 text".into()))
}

#[cfg(test)]
mod tests {
    use super::SourceError;

    #[test]
    fn a_timeout_says_whether_the_server_was_silent_and_gives_the_proxy_hint_only_over_https() {
        let timeout =
            |ssh, silent| SourceError::Timeout { repo: "https://git.example/app.git".into(), git_ref: "main".into(), ssh, silent };
        let slow = timeout(false, None).to_string();
        assert!(slow.contains("timed out; check the network") && slow.contains("SLIPWAY_GIT_EXPECT_CONTINUE=off"), "{slow}");
        assert!(!timeout(true, None).to_string().contains("EXPECT_CONTINUE"));
        let silent = timeout(false, Some(60)).to_string();
        assert!(silent.contains("said nothing for 60 s") && !silent.contains("EXPECT_CONTINUE"), "{silent}");
    }
}
