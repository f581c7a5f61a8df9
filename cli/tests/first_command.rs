//! README's first command, `examples/hello/deploy.sh`, on a machine that
//! lacks what it needs: run as a user who is not root (`nobody`, or the
//! current user when the tests do not run as root) with a PATH holding only
//! the tools the test chose, it names each missing piece with the one
//! command that provides it, and stops before it runs anything else (a
//! `cargo` that records being run stands in for Rust). The script and the
//! library it shares with scripts/services are copied to a directory
//! `nobody` can read, laid out as in the repository.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A copy of the script and its library, and a directory of chosen tools.
struct Machine {
    dir: tempfile::TempDir,
}

impl Machine {
    fn new(tools: &[&str]) -> Machine {
        let dir = tempfile::tempdir().unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for file in ["examples/hello/deploy.sh", "scripts/lib/engine.sh", "scripts/engine"] {
            let to = dir.path().join("repo").join(file);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(repo.join(file), &to).unwrap();
        }
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        for tool in ["bash", "dirname", "basename", "id", "grep", "file", "head", "tail", "cat", "git"].iter().chain(tools) {
            if let Some(path) = which(tool) {
                std::os::unix::fs::symlink(path, bin.join(tool)).unwrap();
            }
        }
        let machine = Machine { dir };
        machine.open_to_all(machine.dir.path());
        machine
    }

    /// A stand-in `cargo` that leaves a mark when run.
    fn with_cargo(self) -> Machine {
        let cargo = self.dir.path().join("bin/cargo");
        let mark = self.dir.path().join("cargo-ran");
        std::fs::write(&cargo, format!("#!/bin/sh\ntouch {}\nexit 99\n", mark.display())).unwrap();
        std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755)).unwrap();
        self
    }

    fn open_to_all(&self, path: &Path) {
        let mode = if path.is_dir() { 0o777 } else { 0o755 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        if path.is_dir() && !path.is_symlink() {
            for entry in std::fs::read_dir(path).unwrap() {
                let entry = entry.unwrap().path();
                if !entry.is_symlink() {
                    self.open_to_all(&entry);
                }
            }
        }
    }

    /// Runs deploy.sh as a user who is not root; its exit code and stderr.
    fn deploy(&self, env: &[(&str, &str)]) -> (Option<i32>, String) {
        let script = self.dir.path().join("repo/examples/hello/deploy.sh");
        // Found on this process's PATH: the child's holds only the chosen tools.
        let bash = which("bash").unwrap();
        let mut command = if is_root() {
            let mut c = Command::new(which("setpriv").expect("setpriv (util-linux)"));
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(bash).arg(&script);
            c
        } else {
            let mut c = Command::new(bash);
            c.arg(&script);
            c
        };
        command.env_clear().env("PATH", self.dir.path().join("bin")).env("HOME", self.dir.path()).envs(env.iter().copied());
        let out = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        eprintln!("{stderr}");
        assert!(!self.dir.path().join("cargo-ran").exists(), "it went on to run cargo:\n{stderr}");
        (out.status.code(), stderr)
    }

    fn engine_command(&self) -> String {
        format!("sudo {}/scripts/engine (installs docker.io and busybox-static, starts dockerd)", self.repo().display())
    }

    fn repo(&self) -> PathBuf {
        self.dir.path().join("repo/examples/hello/../..").canonicalize().unwrap()
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    let out = Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output().unwrap();
    let path = String::from_utf8(out.stdout).unwrap().trim().to_string();
    (out.status.success() && path.starts_with('/')).then(|| PathBuf::from(path))
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim() == "0"
}

/// This machine is Debian with a static busybox, as scripts/services leaves it.
fn assert_debian_with_busybox() {
    assert!(Path::new("/etc/debian_version").exists(), "these tests expect Debian (scripts/services)");
    let file = Command::new("file").args(["-L", "/bin/busybox"]).output().unwrap();
    assert!(String::from_utf8_lossy(&file.stdout).contains("statically linked"), "apt-get install busybox-static");
}

#[test]
fn without_docker_on_debian_it_names_scripts_engine() {
    assert_debian_with_busybox();
    let machine = Machine::new(&["apt-get", "dpkg"]).with_cargo();
    let (code, stderr) = machine.deploy(&[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("deploy.sh: cannot deploy the example yet; missing:"), "{stderr}");
    let line = format!("  - a Docker engine (no docker on PATH): {}", machine.engine_command());
    assert!(stderr.lines().any(|l| l == line), "expected {line:?} in\n{stderr}");
    assert_eq!(stderr.lines().count(), 2, "only Docker is missing:\n{stderr}");
}

#[test]
fn a_docker_engine_that_does_not_answer_is_named_with_why() {
    assert_debian_with_busybox();
    let machine = Machine::new(&["apt-get", "dpkg", "docker"]).with_cargo();
    let socket = machine.dir.path().join("no-such.sock");
    let (code, stderr) = machine.deploy(&[("DOCKER_HOST", &format!("unix://{}", socket.display()))]);
    assert_eq!(code, Some(1), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("  - a Docker engine that answers (docker: Cannot connect to the Docker daemon"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.ends_with(&format!("): {}", machine.engine_command())), "{line}");
}

#[test]
fn without_rust_or_apt_it_says_how_to_get_each() {
    // No cargo, no apt-get: not Debian as far as the script can tell.
    let machine = Machine::new(&[]);
    let (code, stderr) = machine.deploy(&[]);
    assert_eq!(code, Some(1), "{stderr}");
    let rust = "  - Rust (no cargo on PATH): curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh";
    let docker = "  - a Docker engine (no docker on PATH): install Docker Engine, https://docs.docker.com/engine/install/";
    assert!(stderr.lines().any(|l| l == rust) && stderr.lines().any(|l| l == docker), "{stderr}");
}
