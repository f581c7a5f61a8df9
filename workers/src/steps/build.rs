//! `Step::Build`: builds the deployment's image from the `Dockerfile` at the
//! root of its checkout, streaming the build log to `<logs>/<id>/build.log`
//! (the event records where it is and its sha256, never the log itself),
//! capped by `log_cap` (first 4 MiB and last 1 MiB, a marker between).
//!
//! The build context is the checkout minus what `.dockerignore` excludes,
//! matched with the `ignore` crate's gitignore engine after rewriting each
//! Docker pattern as an anchored gitignore pattern (Docker patterns are
//! always relative to the context root; gitignore ones without a slash match
//! at any depth). Known differences from the Docker CLI:
//! - an excluded directory is not descended into, so a `!` exception cannot
//!   re-include a file below it (Docker walks the excluded tree to honour it);
//! - character classes follow gitignore (`[!a]`), not Go's `filepath.Match` (`[^a]`).
//!
//! Like the CLI, `Dockerfile` and `.dockerignore` are always sent: the engine
//! needs them, and itself drops them from the context when they are excluded.
//!
//! When the engine names an image already built from the same commit (the
//! test release's, when live is deployed; the original's, for a mirror) and
//! the Docker engine still has it, the step re-uses it and builds nothing.
//!
//! Cloud mode (and `--no-cache`) builds without the layer cache. Nothing is
//! ever pulled (`pull` stays unset), `forcerm` leaves no intermediate
//! container behind a failed build, and the image is tagged
//! `slipway/<project>:<commit>-<deployment>` so a redelivered command finds
//! it and reports it instead of building twice.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bollard::errors::Error as BollardError;
use bollard::models::BuildInfo;
use bollard::query_parameters::{BuildImageOptionsBuilder, PushImageOptionsBuilder, TagImageOptionsBuilder};
use bollard::{body_full, Docker};
use futures::{Stream, StreamExt};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use sha2::{Digest, Sha256};
use slipway_proto::command::RunStep;
use slipway_proto::event::{BuildMode, ImageBuilt, ImageReused, PinningWarning};
use slipway_proto::Event;
use tokio::io::AsyncWriteExt;

use super::docker::{self, Failure, LOG_TAIL};
use super::log_cap::CappedLog;
use super::pinning;
use super::{Runtime, Settings};

/// Files the engine needs whatever `.dockerignore` says.
const ALWAYS_SENT: [&str; 2] = ["Dockerfile", ".dockerignore"];

pub async fn run(command: &RunStep, _env: &Settings, rt: &Runtime) -> Event {
    match reuse(command).await {
        Ok(Some(reused)) => return Event::ImageReused(reused),
        Ok(None) => {}
        Err(failure) => return failure.for_command(command),
    }
    match build(command, rt).await {
        Ok(built) => Event::ImageBuilt(built),
        Err(failure) => failure.for_command(command),
    }
}

/// The engine's re-use candidate (an image a successful deployment built
/// from the same commit), if the Docker engine still has it: then nothing
/// is built. Gone (pruned, another host), it is built again.
async fn reuse(command: &RunStep) -> Result<Option<ImageReused>, Failure> {
    let Some(source) = &command.context.reuse else { return Ok(None) };
    let docker = docker::connect().await?;
    Ok(find_image(&docker, &source.image_id).await?.map(|image_id| ImageReused { image_id, source_deployment: source.deployment_id }))
}

async fn build(command: &RunStep, rt: &Runtime) -> Result<ImageBuilt, Failure> {
    let ctx = &command.context;
    let tag = docker::image_tag(ctx).map_err(Failure::new)?;
    let nocache = ctx.mode == BuildMode::Cloud || ctx.no_cache;
    let log_path = rt.logs.join(ctx.deployment_id.to_string()).join("build.log");
    let docker = docker::connect().await?;
    let workspace = rt.workspaces.join(ctx.deployment_id.to_string());
    let warnings = pinning_warnings(&workspace).await;
    let workspace_dockerfile = read_checkout_file(&workspace.join("Dockerfile")).ok().flatten().unwrap_or_default();
    if let Some(image_id) = find_image(&docker, &tag).await? {
        // A redelivery: the first delivery built and tagged it (and may
        // have pushed it; pushing again is a no-op for the registry).
        let pushed = push(&docker, rt, ctx, &image_id, &tag).await?;
        let base_images = base_digests(&docker, &workspace_dockerfile).await;
        let found = already_built(image_id, tag, nocache, &log_path).await;
        return Ok(ImageBuilt { mode: ctx.mode, warnings, pushed, base_images, ..found });
    }
    let started = Instant::now();
    let tar = context_tar(workspace).await?;
    let mut options = BuildImageOptionsBuilder::new()
        .dockerfile("Dockerfile")
        .t(&tag)
        .nocache(nocache)
        .rm(true)
        .forcerm(true)
        // No image labels: the classic builder turns each label into a
        // build step of its own (measured: four labels cost 0.65-0.85 s of
        // a 1.1 s build). The tag `slipway/<project>:<commit>-<deployment>`
        // names the image; its containers carry the labels.
        .build();
    if rt.pull_base_images {
        // Only when the operator asks: nothing can be pulled in an offline farm.
        options.pull = Some("true".into());
    }
    let mut log = BuildLog::create(&log_path).await?;
    let outcome = drain(docker.build_image(options, None, Some(body_full(tar.into()))), &mut log).await;
    let (digest, tail) = log.finish().await?;
    if let Err(reason) = outcome {
        return Err(Failure::new(reason).with_details(tail));
    }
    let image_id = find_image(&docker, &tag)
        .await?
        .ok_or_else(|| Failure::new(format!("the build reported success but image {tag} does not exist")).with_details(tail))?;
    let pushed = push(&docker, rt, ctx, &image_id, &tag).await?;
    let base_images = base_digests(&docker, &workspace_dockerfile).await;
    Ok(ImageBuilt {
        pushed,
        base_images,
        image_id,
        tag,
        cache_used: !nocache,
        duration_ms: started.elapsed().as_millis() as u64,
        log_ref: Some(log_path.display().to_string()),
        log_digest: Some(digest),
        mode: ctx.mode,
        warnings,
    })
}

/// The Dockerfile lint's findings for a checkout (none if it cannot be read:
/// the build then fails with the reason).
async fn pinning_warnings(workspace: &Path) -> Vec<PinningWarning> {
    let Ok(Some(dockerfile)) = read_checkout_file(&workspace.join("Dockerfile")) else { return vec![] };
    let lockfile = ["package-lock.json", "npm-shrinkwrap.json"].iter().any(|f| workspace.join(f).exists());
    pinning::lint(&dockerfile, lockfile)
        .into_iter()
        .map(|f| PinningWarning { file: "Dockerfile".into(), line: f.line, rule: f.rule.into(), message: f.message })
        .collect()
}

async fn find_image(docker: &Docker, tag: &str) -> Result<Option<String>, Failure> {
    match docker.inspect_image(tag).await {
        Ok(image) => Ok(image.id),
        Err(BollardError::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
        Err(e) => Err(Failure::new(format!("Docker could not inspect image {tag}: {e}"))),
    }
}

/// The outcome of a build done by an earlier delivery, with the log it left
/// (its duration is not known here, so it is reported as 0).
async fn already_built(image_id: String, tag: String, nocache: bool, log_path: &Path) -> ImageBuilt {
    let digest = tokio::fs::read(log_path).await.ok().map(|bytes| hex::encode(Sha256::digest(bytes)));
    ImageBuilt {
        image_id,
        tag,
        cache_used: !nocache,
        duration_ms: 0,
        log_ref: digest.as_ref().map(|_| log_path.display().to_string()),
        log_digest: digest,
        mode: BuildMode::default(),
        warnings: vec![],
        pushed: None,
        base_images: vec![],
    }
}

/// Each base image as `REF@DIGEST`: its registry digest when Docker knows
/// one, else its local image id.
async fn base_digests(docker: &Docker, dockerfile: &str) -> Vec<String> {
    let mut out = Vec::new();
    for base in pinning::base_images(dockerfile) {
        let digest = match docker.inspect_image(&base).await {
            Ok(image) => image.repo_digests.and_then(|d| d.into_iter().next()).or(image.id).unwrap_or_default(),
            Err(_) => String::new(),
        };
        out.push(if digest.is_empty() { base } else { format!("{base}@{}", digest.rsplit('@').next().unwrap_or(&digest)) });
    }
    out
}

/// With a registry configured: tags the image `REGISTRY/PROJECT:COMMIT`,
/// pushes it, and returns its reference by digest, which is what other
/// hosts pull. A push error is a build failure (the image would be
/// unreachable from the hosts that run it).
async fn push(
    docker: &Docker,
    rt: &Runtime,
    ctx: &slipway_proto::command::DeploymentContext,
    image_id: &str,
    local_tag: &str,
) -> Result<Option<String>, Failure> {
    let Some(registry) = &rt.registry else { return Ok(None) };
    let repo = format!("{registry}/{}", ctx.project);
    let commit = ctx.commit.as_deref().unwrap_or("unknown");
    let options = TagImageOptionsBuilder::new().repo(&repo).tag(commit).build();
    docker.tag_image(local_tag, Some(options)).await.map_err(|e| Failure::new(format!("tagging {local_tag} as {repo}:{commit}: {e}")))?;
    let mut stream = docker.push_image(&repo, Some(PushImageOptionsBuilder::new().tag(commit).build()), None);
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(error) = info.error_detail.and_then(|d| d.message) {
                    return Err(Failure::new(format!("pushing {repo}:{commit} to {registry}: {error}")));
                }
            }
            Err(e) => return Err(Failure::new(format!("pushing {repo}:{commit} to {registry}: {e}"))),
        }
    }
    // The registry's digest for it is in the image's RepoDigests now.
    let image = docker
        .inspect_image(image_id)
        .await
        .map_err(|e| Failure::new(format!("Docker could not inspect image {image_id} after the push: {e}")))?;
    let prefix = format!("{repo}@");
    image
        .repo_digests
        .unwrap_or_default()
        .into_iter()
        .find(|d| d.starts_with(&prefix))
        .map(Some)
        .ok_or_else(|| Failure::new(format!("pushed {repo}:{commit} but Docker recorded no digest for it")))
}

/// Reads the whole build stream into the log. The engine answers 200 and
/// reports a failed build as an error item in the stream, so success is
/// "the stream ended without one"; the first error is the reason.
async fn drain(mut stream: impl Stream<Item = Result<BuildInfo, BollardError>> + Unpin, log: &mut BuildLog) -> Result<(), String> {
    let mut first_error = None;
    while let Some(item) = stream.next().await {
        let (text, error) = match item {
            Ok(info) => (info.stream.or(info.status).unwrap_or_default(), None),
            Err(BollardError::DockerStreamError { error }) => (format!("{error}\n"), Some(error)),
            Err(BollardError::DockerResponseServerError { message, .. }) => (format!("{message}\n"), Some(message)),
            Err(other) => {
                // A transport error: the stream will not resume.
                first_error.get_or_insert(format!("the Docker build stream broke: {other}"));
                break;
            }
        };
        if let Err(e) = log.write(&text).await {
            first_error.get_or_insert(e.reason);
            break;
        }
        if let Some(error) = error {
            first_error.get_or_insert(error.trim().to_string());
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The build log on disk (capped), its running digest, and its last lines.
struct BuildLog {
    path: PathBuf,
    file: tokio::fs::File,
    hasher: Sha256,
    tail: VecDeque<String>,
    cap: CappedLog,
}

impl BuildLog {
    async fn create(path: &Path) -> Result<BuildLog, Failure> {
        let fail = |e: io::Error| Failure::new(format!("cannot write the build log {}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(fail)?;
        }
        let file = tokio::fs::File::create(path).await.map_err(fail)?;
        let cap = CappedLog::default();
        Ok(BuildLog { path: path.to_path_buf(), file, hasher: Sha256::new(), tail: VecDeque::new(), cap })
    }

    async fn write(&mut self, text: &str) -> Result<(), Failure> {
        let now = self.cap.push(text);
        self.append(&now).await?;
        // The failure evidence comes from everything the build said, cut or not.
        for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
            if self.tail.len() == LOG_TAIL {
                self.tail.pop_front();
            }
            self.tail.push_back(line.to_string());
        }
        Ok(())
    }

    async fn append(&mut self, text: &str) -> Result<(), Failure> {
        self.file.write_all(text.as_bytes()).await.map_err(|e| self.io_failure(e))?;
        self.hasher.update(text.as_bytes());
        Ok(())
    }

    /// Writes the held-back tail, flushes the log; returns its sha256 (hex,
    /// of the stored bytes) and its last lines.
    async fn finish(mut self) -> Result<(String, Vec<String>), Failure> {
        let end = std::mem::take(&mut self.cap).finish();
        self.append(&end).await?;
        self.file.flush().await.map_err(|e| self.io_failure(e))?;
        Ok((hex::encode(self.hasher.finalize()), self.tail.into()))
    }

    fn io_failure(&self, e: io::Error) -> Failure {
        Failure::new(format!("cannot write the build log {}: {e}", self.path.display()))
    }
}

/// The build context as a tar archive, built off the async threads.
async fn context_tar(root: PathBuf) -> Result<Vec<u8>, Failure> {
    if !root.is_dir() {
        return Err(Failure::new(format!("no checkout at {}; the checkout step must run before the build", root.display())));
    }
    match read_checkout_file(&root.join("Dockerfile")) {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(Failure::new(format!(
                "no Dockerfile at the repository root ({}); Slipway builds the image from it",
                root.join("Dockerfile").display()
            )))
        }
        Err(why) => return Err(Failure::new(why)),
    }
    tokio::task::spawn_blocking(move || {
        let ignore = dockerignore(&root).map_err(Failure::new)?;
        archive(&root, &ignore).map_err(|e| Failure::new(format!("cannot pack the build context {}: {e}", root.display())))
    })
    .await
    .map_err(|e| Failure::new(format!("packing the build context failed: {e}")))?
}

/// The largest `Dockerfile` or `.dockerignore` read (a repository is untrusted input).
const MAX_BUILD_FILE: u64 = 1 << 20;

/// A `Dockerfile` or `.dockerignore` of the checkout, `None` if missing. It
/// must be a regular file of at most [`MAX_BUILD_FILE`] bytes: a symbolic
/// link (to `/dev/zero`, to a file of the worker's host) is refused, not
/// followed, so a repository can neither exhaust the worker's memory nor
/// have a host file's lines echoed into a failure.
fn read_checkout_file(path: &Path) -> Result<Option<String>, String> {
    let shown = path.display();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {shown}: {e}")),
    };
    if meta.file_type().is_symlink() {
        return Err(format!("{shown} is a symbolic link; Slipway reads it only as a regular file in the repository"));
    }
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    if meta.len() > MAX_BUILD_FILE {
        return Err(format!("{shown} is {} bytes; the limit is {MAX_BUILD_FILE}", meta.len()));
    }
    std::fs::read_to_string(path).map(Some).map_err(|e| format!("cannot read {shown}: {e}"))
}

/// The root `.dockerignore` as a gitignore matcher (empty without one).
fn dockerignore(root: &Path) -> Result<Gitignore, String> {
    let path = root.join(".dockerignore");
    let Some(text) = read_checkout_file(&path)? else { return Ok(Gitignore::empty()) };
    let mut builder = GitignoreBuilder::new(root);
    for line in text.lines() {
        if let Some(pattern) = gitignore_pattern(line) {
            builder
                .add_line(Some(path.clone()), &pattern)
                .map_err(|e| format!("{}: bad pattern `{}`: {e}", path.display(), line.trim()))?;
        }
    }
    builder.build().map_err(|e| format!("{}: {e}", path.display()))
}

/// One `.dockerignore` line as the gitignore line matching the same paths:
/// Docker cleans each pattern as a path relative to the context root, so it
/// becomes anchored (`/...`) and loses a trailing `/` (which in Docker does
/// not restrict the pattern to directories).
fn gitignore_pattern(line: &str) -> Option<String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (negate, pattern) = match line.strip_prefix('!') {
        Some(rest) => ("!", rest.trim()),
        None => ("", line),
    };
    let mut pattern = pattern.trim_start_matches('/');
    while let Some(rest) = pattern.strip_prefix("./") {
        pattern = rest.trim_start_matches('/');
    }
    let pattern = pattern.trim_end_matches('/');
    if pattern.is_empty() || pattern == "." {
        return None;
    }
    Some(format!("{negate}/{pattern}"))
}

fn archive(root: &Path, ignore: &Gitignore) -> io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    // Symlinks go in as links, as the Docker CLI sends them.
    tar.follow_symlinks(false);
    add_dir(root, root, ignore, &mut tar)?;
    tar.into_inner()
}

/// Adds `dir`'s entries in name order (a stable archive for a stable tree).
fn add_dir(root: &Path, dir: &Path, ignore: &Gitignore, tar: &mut tar::Builder<Vec<u8>>) -> io::Result<()> {
    let mut entries = std::fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let rel = path.strip_prefix(root).map_err(|e| io::Error::other(e.to_string()))?;
        let kind = entry.file_type()?;
        let always = ALWAYS_SENT.iter().any(|name| rel == Path::new(name));
        if !always && ignore.matched(rel, kind.is_dir()).is_ignore() {
            continue;
        }
        if kind.is_dir() {
            tar.append_dir(rel, &path)?;
            add_dir(root, &path, ignore, tar)?;
        } else if kind.is_file() || kind.is_symlink() {
            tar.append_path_with_name(&path, rel)?;
        }
        // Sockets, FIFOs and devices are not part of a build context.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_files_must_be_small_regular_files_of_the_checkout() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let root = dir.path();
        // `ln -s /dev/zero Dockerfile` would have the worker read forever.
        std::os::unix::fs::symlink("/dev/zero", root.join("Dockerfile")).expect("symlink");
        let refused = read_checkout_file(&root.join("Dockerfile")).expect_err("a symlink");
        assert!(refused.contains("symbolic link"), "{refused}");
        // A .dockerignore pointing at a host file: refused, its lines never echoed.
        std::os::unix::fs::symlink("/etc/passwd", root.join(".dockerignore")).expect("symlink");
        let refused = dockerignore(root).expect_err("a symlink");
        assert!(refused.contains("symbolic link") && !refused.contains("root:"), "{refused}");
        std::fs::remove_file(root.join("Dockerfile")).expect("rm");
        std::fs::write(root.join("Dockerfile"), vec![b'#'; MAX_BUILD_FILE as usize + 1]).expect("write");
        assert!(read_checkout_file(&root.join("Dockerfile")).expect_err("too big").contains("the limit is"));
        std::fs::write(root.join("Dockerfile"), "FROM scratch\n").expect("write");
        assert_eq!(read_checkout_file(&root.join("Dockerfile")), Ok(Some("FROM scratch\n".to_string())));
        assert_eq!(read_checkout_file(&root.join("missing")), Ok(None));
    }

    #[test]
    fn docker_patterns_become_anchored_gitignore_patterns() {
        assert_eq!(gitignore_pattern("secret.txt").as_deref(), Some("/secret.txt"));
        assert_eq!(gitignore_pattern("  /logs/  ").as_deref(), Some("/logs"));
        assert_eq!(gitignore_pattern("./a/*.tmp").as_deref(), Some("/a/*.tmp"));
        assert_eq!(gitignore_pattern("!keep.md").as_deref(), Some("!/keep.md"));
        assert_eq!(gitignore_pattern("**/*.pyc").as_deref(), Some("/**/*.pyc"));
        assert_eq!(gitignore_pattern("# comment"), None);
        assert_eq!(gitignore_pattern("   "), None);
    }

    #[test]
    fn dockerignore_excludes_at_the_root_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(".dockerignore"), "secret.txt\n*.log\n!keep.log\nDockerfile\n").expect("write");
        let ignore = dockerignore(dir.path()).expect("parses");
        let ignored = |p: &str| ignore.matched(p, false).is_ignore();
        assert!(ignored("secret.txt"));
        assert!(!ignored("sub/secret.txt"), "Docker patterns are anchored at the context root");
        assert!(ignored("build.log"));
        assert!(!ignored("keep.log"));
    }
}
