//! Real git servers on loopback for the source tests and benches:
//! - [`HttpsGit`]: nginx terminating TLS (a certificate from a CA made for
//!   the test), HTTP basic auth, and `git http-backend` through fcgiwrap;
//! - [`SshGit`]: OpenSSH's sshd on its own port and configuration, with
//!   one ed25519 host key and one authorized deploy key;
//! - [`TlsProxy`]: nginx terminating TLS in front of a plain HTTP server on
//!   loopback (a Slipway server reached with `--server https://...`).
//!
//! Both serve the bare repositories under their own temporary directory;
//! [`publish`] pushes a working repository there. Each server is a child
//! process killed on drop. Certificates and keys come from `openssl` and
//! `ssh-keygen`; nginx, fcgiwrap and sshd are installed by
//! scripts/services. A missing program fails the test with its name.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Runs a program to completion, panicking with its output when it fails.
fn run(program: &str, args: &[&str], dir: &Path) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (scripts/services installs it): {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn spawn(program: &str, args: &[&str], log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("a log file");
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("a log file"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program} (scripts/services installs it): {e}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// Waits until `port` accepts connections, or panics with the server's log.
fn wait_listening(port: u16, log: &Path) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the server on port {port} did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Makes a bare repository `name` under `root` and returns its path.
fn bare(root: &Path, name: &str) -> PathBuf {
    let path = root.join(name);
    run("git", &["init", "-q", "--bare", "--initial-branch=main", path.to_str().expect("utf-8")], root);
    path
}

/// Pushes every branch and tag of the working repository `from` to the
/// bare repository `to` (forced, so a test can rewrite history).
pub fn publish(from: &Path, to: &Path) {
    let to = to.to_str().expect("utf-8");
    run("git", &["push", "-q", "--force", to, "refs/heads/*:refs/heads/*", "refs/tags/*:refs/tags/*"], from);
}

/// A CA made for the test (`ca.pem`, `ca.key`) and a server certificate
/// it signed for 127.0.0.1 and localhost (`server.pem`, `server.key`), in `d`.
fn make_certificates(d: &Path) {
    let subj_ca = "/CN=Slipway Test CA";
    run(
        "openssl",
        &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", subj_ca],
        d,
    );
    run("openssl", &["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"], d);
    std::fs::write(d.join("ext.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").expect("ext");
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
        d,
    );
}

/// Starts nginx in `d` (which holds `server.pem`, `server.key` and a
/// `tmp/` folder) on a free loopback port over TLS, serving `location /`
/// with `location`'s directives; its port and process.
fn tls_nginx(d: &Path, location: &str) -> (u16, Child) {
    let port = free_port();
    let root = d.display();
    let conf = format!(
        r#"daemon off;
master_process off;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{}}
http {{
  log_format requests '$request_method $uri expect=$http_expect status=$status';
  access_log {root}/access.log requests;
  client_body_temp_path {root}/tmp/body;
  fastcgi_temp_path {root}/tmp/fastcgi;
  proxy_temp_path {root}/tmp/proxy;
  uwsgi_temp_path {root}/tmp/uwsgi;
  scgi_temp_path {root}/tmp/scgi;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {root}/server.pem;
    ssl_certificate_key {root}/server.key;
    location / {{
      {location}
    }}
  }}
}}
"#
    );
    let conf_path = d.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("nginx.conf");
    let nginx = spawn("nginx", &["-c", conf_path.to_str().expect("utf-8"), "-p", &root.to_string(), "-e", "stderr"], &d.join("nginx.log"));
    (port, nginx)
}

/// nginx + fcgiwrap + `git http-backend`, over TLS with basic auth.
pub struct HttpsGit {
    dir: TempDir,
    port: u16,
    children: Vec<Child>,
    /// The test CA's certificate (PEM): a client must trust it.
    pub ca_pem: String,
}

impl HttpsGit {
    /// Serves bare repositories to `user` with `password`.
    pub fn start(user: &str, password: &str) -> HttpsGit {
        HttpsGit::start_with(user, password, "")
    }

    /// Like `start`, answering every request that carries an `Expect`
    /// header with 417 Expectation Failed, as some old proxies do.
    pub fn refusing_expect(user: &str, password: &str) -> HttpsGit {
        HttpsGit::start_with(user, password, "if ($http_expect) { return 417; }\n      ")
    }

    /// `start`, with `first` (nginx directives) at the top of the location.
    fn start_with(user: &str, password: &str, first: &str) -> HttpsGit {
        let dir = tempfile::tempdir().expect("a temp dir");
        let d = dir.path();
        for sub in ["repos", "tmp"] {
            std::fs::create_dir_all(d.join(sub)).expect("a dir");
        }
        make_certificates(d);
        let hash = run("openssl", &["passwd", "-apr1", password], d);
        std::fs::write(d.join("htpasswd"), format!("{user}:{}", hash.trim())).expect("htpasswd");
        let root = d.display();
        let location = format!(
            r#"{first}auth_basic "git";
      auth_basic_user_file {root}/htpasswd;
      fastcgi_pass unix:{root}/fcgi.sock;
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME /usr/lib/git-core/git-http-backend;
      fastcgi_param GIT_PROJECT_ROOT {root}/repos;
      fastcgi_param GIT_HTTP_EXPORT_ALL "";
      fastcgi_param PATH_INFO $uri;
      fastcgi_param REMOTE_USER $remote_user;"#
        );
        let socket = format!("unix:{root}/fcgi.sock");
        let fcgi = spawn("fcgiwrap", &["-s", &socket], &d.join("fcgiwrap.log"));
        let (port, nginx) = tls_nginx(d, &location);
        let ca_pem = std::fs::read_to_string(d.join("ca.pem")).expect("ca.pem");
        let server = HttpsGit { children: vec![fcgi, nginx], port, ca_pem, dir };
        wait_listening(port, &server.dir.path().join("nginx.log"));
        server
    }

    /// A new, empty bare repository `name` and its HTTPS URL (no credentials in it).
    pub fn repository(&self, name: &str) -> (PathBuf, String) {
        let path = bare(&self.dir.path().join("repos"), name);
        (path, format!("https://127.0.0.1:{}/{name}", self.port))
    }

    /// The CA certificate's path (for `git -c http.sslCAInfo=...`).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The requests served so far, one line each:
    /// `METHOD URI expect=<Expect header or -> status=<status>`.
    pub fn requests(&self) -> Vec<String> {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        log.lines().map(str::to_string).collect()
    }
}

impl Drop for HttpsGit {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// sshd with one ed25519 host key, serving as the current user with one
/// authorized deploy key.
pub struct SshGit {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
    /// The deploy key's private half (OpenSSH format).
    pub deploy_key: String,
}

impl SshGit {
    pub fn start() -> SshGit {
        let dir = tempfile::tempdir().expect("a temp dir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("repos")).expect("a dir");
        // sshd's privilege separation wants this directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        run("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-f", "host_key", "-C", "slipway-test-host"], d);
        run("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-f", "deploy_key", "-C", "slipway-test-deploy"], d);
        std::fs::copy(d.join("deploy_key.pub"), d.join("authorized_keys")).expect("authorized_keys");
        let deploy_key = std::fs::read_to_string(d.join("deploy_key")).expect("deploy_key");
        let server = SshGit { dir, port: free_port(), child: None, deploy_key };
        server.with_started()
    }

    fn with_started(mut self) -> SshGit {
        let d = self.dir.path().to_path_buf();
        let root = d.display();
        let conf = format!(
            "Port {}\nListenAddress 127.0.0.1\nHostKey {root}/host_key\nPidFile {root}/sshd.pid\n\
             AuthorizedKeysFile {root}/authorized_keys\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n",
            self.port
        );
        std::fs::write(d.join("sshd_config"), conf).expect("sshd_config");
        let conf_path = d.join("sshd_config");
        self.child = Some(spawn("/usr/sbin/sshd", &["-D", "-e", "-f", conf_path.to_str().expect("utf-8")], &d.join("sshd.log")));
        wait_listening(self.port, &d.join("sshd.log"));
        self
    }

    /// A new, empty bare repository `name` and its ssh:// URL.
    pub fn repository(&self, name: &str) -> (PathBuf, String) {
        let path = bare(&self.dir.path().join("repos"), name);
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        (path.clone(), format!("ssh://{user}@127.0.0.1:{}{}", self.port, path.display()))
    }

    /// A new deploy key made by `ssh-keygen` with `form` (type and format
    /// options), encrypted with `passphrase` and authorized here: its
    /// private text.
    pub fn authorized_key(&self, name: &str, passphrase: &str, form: &[&str]) -> String {
        let d = self.dir.path();
        let mut args = vec!["-q", "-N", passphrase, "-f", name, "-C", name];
        args.extend_from_slice(form);
        run("ssh-keygen", &args, d);
        self.authorize(&std::fs::read_to_string(d.join(format!("{name}.pub"))).expect("a public key"));
        std::fs::read_to_string(d.join(name)).expect("a private key")
    }

    /// Authorizes one more public key (an OpenSSH line).
    pub fn authorize(&self, public_key: &str) {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().append(true).open(self.dir.path().join("authorized_keys")).expect("authorized_keys");
        writeln!(file, "{public_key}").expect("authorized_keys");
    }

    /// The server's host key as a `known_hosts` line.
    pub fn known_host(&self) -> String {
        let public = std::fs::read_to_string(self.dir.path().join("host_key.pub")).expect("host_key.pub");
        let mut fields = public.split_whitespace();
        let (kind, key) = (fields.next().unwrap_or_default(), fields.next().unwrap_or_default());
        format!("[127.0.0.1]:{} {kind} {key}", self.port)
    }

    /// Restarts the server with a new host key (as after a reinstall, or an
    /// attacker in the middle), on the same port.
    pub fn change_host_key(mut self) -> SshGit {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let d = self.dir.path().to_path_buf();
        for f in ["host_key", "host_key.pub"] {
            let _ = std::fs::remove_file(d.join(f));
        }
        run("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-f", "host_key", "-C", "slipway-test-host-2"], &d);
        self.with_started()
    }
}

impl Drop for SshGit {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// nginx terminating TLS (a certificate from a CA made for the test) in
/// front of a plain HTTP server on loopback.
pub struct TlsProxy {
    dir: TempDir,
    child: Child,
    /// `https://127.0.0.1:PORT`
    pub url: String,
}

impl TlsProxy {
    /// Proxies `https://127.0.0.1:PORT/...` to `upstream` (`127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> TlsProxy {
        let dir = tempfile::tempdir().expect("a temp dir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("tmp")).expect("a dir");
        make_certificates(d);
        let (port, child) = tls_nginx(d, &format!("proxy_pass http://{upstream};\n      proxy_buffering off;"));
        let proxy = TlsProxy { child, url: format!("https://127.0.0.1:{port}"), dir };
        wait_listening(port, &proxy.dir.path().join("nginx.log"));
        proxy
    }

    /// The test CA's certificate: a client must trust it.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
