//! `slipway-bench-router`: Slipway's router as a keep-alive reverse proxy,
//! beside nginx doing the same job, in one run on the same upstream. `wrk`
//! drives three configurations on 127.0.0.1, interleaved round by round
//! (each round starting one configuration later than the last):
//! straight to the upstream (what the machine does without a proxy), through
//! nginx (an `upstream` block with `keepalive 64`, HTTP/1.1 to the upstream,
//! the same `X-Forwarded-*` headers), and through Slipway's router in this
//! process (by default `slipway_router::serve_threads` with 2 threads, as
//! nginx has 2 workers here; `--router-runtime multi|current` runs `serve` on
//! one tokio runtime instead). The upstream is a small hyper server in this
//! process, on its own runtime, answering a fixed 100-byte body. It prints
//! each configuration's median requests/s, p50 and p99, the CPU time the
//! proxy and the upstream spent per request (read from /proc: what each
//! costs, whatever the contention), and the router/nginx ratios against the
//! goals: throughput >= 1.00x nginx, p99 <= 1.00x nginx.
//!
//! HAProxy (`nbthread 2`, `http-reuse always`) runs the same job in its own
//! column; the goals hold against the better of nginx and HAProxy on each
//! figure, CPU per request included.
//!
//! With `--pingora BINARY` (the proxy `bench/pingora` builds), Cloudflare's
//! pingora runs the same HTTP job in a column of its own: the alternative
//! proxy foundation, measured side by side. Measured here (December 2026):
//! pingora 0.46x nginx's requests/s at 2.75x its CPU per request, where
//! the router was at 0.89x and 1.21x in the same run.
//!
//! Two HTTPS rounds follow (`--no-https` leaves them out): nginx, HAProxy and
//! the router each terminate TLS with the same certificate (ECDSA P-256,
//! made with `openssl` for the run; SNI `localhost`), ALPN `http/1.1`, the
//! same upstream behind. `https` is kept-alive connections, like the HTTP
//! round; `handshakes` sends `Connection: close`, so every request is a new
//! TCP connection and a new TLS handshake: its requests/s are new TLS
//! handshakes per second, held against nginx's. wrk offers each new
//! connection the session its last one was given, as a returning browser
//! does, and all three proxies resume it (TLS 1.3 session tickets), so the
//! round times resumed handshakes. Until the router kept one TLS
//! configuration for all its threads, it resumed only the sessions of the
//! thread that issued them, and its handshakes cost wrk a full handshake's
//! certificate and signature checks.
//!
//! Run (needs `wrk`, `nginx`, `haproxy` and `openssl`: `apt-get install -y wrk nginx haproxy openssl`):
//!
//! ```text
//! cargo run --release -p slipway-bench --bin slipway-bench-router -- --rounds 3 --seconds 5
//! ```
//!
//! On a 2-core machine wrk, the proxy and the upstream compete for the same
//! cores, and anything else running (a build) moves the figures by tens of
//! percent from one run to the next; the interleaved rounds and medians
//! make the two proxies' figures comparable within a run, and the CPU per
//! request is the steadier figure across runs.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use slipway_router::{CertifiedKey, Edge, Route, RouteHandle, RouteTable, ServeOptions, TlsHandle, TlsTable};

/// The Host header wrk sends, routed by Slipway's router.
const HOST: &str = "bench.localhost";
/// The upstream's whole answer: 100 bytes.
const BODY: &[u8; 100] = b"slipway-bench-router upstream: a fixed body of one hundred bytes, the same for every request.......\n";

#[derive(Parser)]
#[command(about = "Slipway's router vs nginx and HAProxy as keep-alive reverse proxies, side by side, driven by wrk on 127.0.0.1")]
struct Args {
    /// Rounds of each configuration, interleaved; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Length of one wrk run, in seconds.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// wrk's open connections (-c).
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// wrk's threads (-t).
    #[arg(long, default_value_t = 2)]
    wrk_threads: usize,
    /// How the router's tokio runtime is laid out.
    #[arg(long, value_enum, default_value_t = Layout::Threads)]
    router_runtime: Layout,
    /// Threads of the router's runtime (of each kind of layout).
    #[arg(long, default_value_t = 2)]
    router_threads: usize,
    /// Threads of the upstream's runtime (multi-thread).
    #[arg(long, default_value_t = 2)]
    upstream_threads: usize,
    /// Drive only this configuration (to profile one side); no ratios.
    #[arg(long, value_enum)]
    only: Option<Config>,
    /// Leave out the HTTPS rounds.
    #[arg(long)]
    no_https: bool,
    /// Also drive Cloudflare's pingora as the same proxy, HTTP only (2
    /// threads, keep-alive pool, X-Forwarded-*): the binary `bench/pingora`
    /// builds (`cargo build --release` there; not a workspace member).
    /// Shown beside the others; the goals stay the router's.
    #[arg(long, value_name = "BINARY")]
    pingora: Option<std::path::PathBuf>,
}

/// What a round measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// Plain HTTP, kept-alive connections.
    Http,
    /// HTTPS (TLS terminated by the proxy), kept-alive connections.
    Https,
    /// HTTPS with `Connection: close`: a new connection and a full TLS
    /// handshake per request.
    Handshakes,
}

impl Round {
    fn name(self) -> &'static str {
        match self {
            Round::Http => "http",
            Round::Https => "https",
            Round::Handshakes => "handshakes",
        }
    }

    /// The URL wrk is given: the certificate's name over TLS (wrk sends it as SNI).
    fn url(self, addr: SocketAddr) -> String {
        match self {
            Round::Http => format!("http://{addr}/"),
            Round::Https | Round::Handshakes => format!("https://{TLS_NAME}:{}/", addr.port()),
        }
    }
}

/// The name the HTTPS rounds' certificate is for, and their SNI.
const TLS_NAME: &str = "localhost";

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Layout {
    /// `slipway_router::serve_threads`: --router-threads threads, each with a
    /// current-thread runtime, sharing the listening socket.
    Threads,
    /// `serve` on one multi-thread runtime with --router-threads workers.
    Multi,
    /// `serve` on one current-thread runtime (one core at most).
    Current,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("slipway-bench-router: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One wrk run's figures.
#[derive(Debug, Clone, Copy)]
struct Measure {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// The proxy's CPU time (user + system, all its threads or processes)
    /// per request: what it costs, whatever the contention.
    cpu_us: f64,
    /// The upstream's CPU time per request, to see what a proxy costs the
    /// upstream (it should be the same behind either).
    upstream_cpu_us: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Config {
    Direct,
    Nginx,
    Haproxy,
    Router,
    Pingora,
}

impl Config {
    fn name(self) -> &'static str {
        match self {
            Config::Direct => "direct (no proxy)",
            Config::Nginx => "nginx",
            Config::Haproxy => "haproxy",
            Config::Router => "slipway router",
            Config::Pingora => "pingora",
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    if args.rounds == 0 || args.seconds == 0 {
        bail!("--rounds and --seconds must be at least 1");
    }
    let wrk_version = tool_version("wrk", &["-v"])?;
    let nginx_version = tool_version("nginx", &["-v"])?;
    let haproxy_version = tool_version("haproxy", &["-v"])?;

    let upstream = Upstream::start(args.upstream_threads)?;
    let router = Router::start(upstream.addr, args.router_runtime, args.router_threads, None)?;
    let tmp = tempfile::tempdir()?;
    let nginx = Nginx::start(tmp.path(), upstream.addr, None)?;
    let haproxy = Haproxy::start(tmp.path(), upstream.addr, None)?;
    let pingora = args.pingora.as_deref().map(|binary| Haproxy::pingora(binary, tmp.path(), upstream.addr)).transpose()?;
    // The HTTPS sides: the same certificate for all three.
    let https = if args.no_https {
        None
    } else {
        let tls_dir = tmp.path().join("tls");
        std::fs::create_dir_all(&tls_dir)?;
        let cert = Certificate::make(&tls_dir)?;
        let router = Router::start(upstream.addr, args.router_runtime, args.router_threads, Some(cert.key.clone()))?;
        let nginx = Nginx::start(&tls_dir, upstream.addr, Some(&cert))?;
        let haproxy = Haproxy::start(&tls_dir, upstream.addr, Some(&cert))?;
        Some((router, nginx, haproxy))
    };

    let mut targets: Vec<(Round, Config, SocketAddr)> = vec![
        (Round::Http, Config::Direct, upstream.addr),
        (Round::Http, Config::Nginx, nginx.addr),
        (Round::Http, Config::Haproxy, haproxy.0.addr),
        (Round::Http, Config::Router, router.addr),
    ];
    if let Some(pingora) = &pingora {
        targets.push((Round::Http, Config::Pingora, pingora.0.addr));
    }
    if let Some((router, nginx, haproxy)) = &https {
        for round in [Round::Https, Round::Handshakes] {
            targets.extend([
                (round, Config::Nginx, nginx.addr),
                (round, Config::Haproxy, haproxy.0.addr),
                (round, Config::Router, router.addr),
            ]);
        }
    }
    targets.retain(|(_, config, _)| args.only.is_none_or(|only| only == *config));
    print_header(args, &wrk_version, &format!("{nginx_version}; haproxy: {haproxy_version}, nbthread 2, http-reuse always"));

    // Warm-up, not counted: connection pools, page cache, CPU frequency.
    for &(round, config, addr) in &targets {
        wrk(args, round, addr, 1).with_context(|| format!("warming up {} ({})", config.name(), round.name()))?;
    }
    let mut measured: Vec<(Round, Config, Vec<Measure>)> = targets.iter().map(|&(r, c, _)| (r, c, Vec::new())).collect();
    for n in 1..=args.rounds {
        let mut line = format!("round {n}:");
        // Each round starts one configuration later: none is always driven
        // last, after the others' connections and their aftermath.
        for i in (0..targets.len()).map(|i| (i + n - 1) % targets.len()) {
            let (round, config, addr) = &targets[i];
            let cpu = || match (config, round, &https) {
                (Config::Direct, ..) => Ok(0.0),
                (Config::Nginx, Round::Http, _) | (Config::Nginx, _, None) => nginx.cpu_seconds(),
                (Config::Nginx, _, Some((_, tls, _))) => tls.cpu_seconds(),
                (Config::Haproxy, Round::Http, _) | (Config::Haproxy, _, None) => haproxy.0.cpu_seconds(),
                (Config::Haproxy, _, Some((_, _, tls))) => tls.0.cpu_seconds(),
                // Both routers' threads: the idle one adds nothing.
                (Config::Router, ..) => threads_cpu_seconds("router"),
                (Config::Pingora, ..) => pingora.as_ref().map_or(Ok(0.0), |p| p.0.cpu_seconds()),
            };
            let (before, upstream_before) = (cpu()?, threads_cpu_seconds("upstream")?);
            let mut m =
                wrk(args, *round, *addr, args.seconds).with_context(|| format!("measuring {} ({})", config.name(), round.name()))?;
            let requests = m.rps * args.seconds as f64;
            m.cpu_us = (cpu()? - before) / requests * 1e6;
            m.upstream_cpu_us = (threads_cpu_seconds("upstream")? - upstream_before) / requests * 1e6;
            line.push_str(&format!("  {} {} {} req/s p99 {:.2} ms", round.name(), config.name(), thousands(m.rps), m.p99_ms));
            measured[i].2.push(m);
        }
        println!("{line}");
    }

    drop(nginx);
    drop(haproxy);
    drop(pingora);
    router.stop();
    if let Some((router, nginx, haproxy)) = https {
        drop(nginx);
        drop(haproxy);
        router.stop();
    }
    upstream.stop();

    let medians: Vec<(Round, Config, Measure)> = measured
        .into_iter()
        .map(|(round, config, ms)| {
            let median = |f: fn(&Measure) -> f64| median(ms.iter().map(f).collect());
            let m = Measure {
                rps: median(|m| m.rps),
                p50_ms: median(|m| m.p50_ms),
                p99_ms: median(|m| m.p99_ms),
                cpu_us: median(|m| m.cpu_us),
                upstream_cpu_us: median(|m| m.upstream_cpu_us),
            };
            (round, config, m)
        })
        .collect();
    let of = |r: Round, c: Config| medians.iter().find(|(round, m, _)| *round == r && *m == c).map(|(_, _, m)| *m);

    println!("\nround       config              req/s (median)   p50          p99          CPU per request: proxy   upstream");
    for (round, config, m) in &medians {
        let cpu = if *config == Config::Direct { "-".to_string() } else { format!("{:.1} us", m.cpu_us) };
        println!(
            "{:<10}  {:<18}  {:>14}   {:>7.2} ms   {:>7.2} ms   {cpu:>22}   {:>5.1} us",
            round.name(),
            config.name(),
            thousands(m.rps),
            m.p50_ms,
            m.p99_ms,
            m.upstream_cpu_us,
        );
    }
    let met = |ok: bool| if ok { "PASS" } else { "MISS" };
    let mut header = false;
    for round in [Round::Http, Round::Https] {
        let (Some(nginx), Some(haproxy), Some(router)) = (of(round, Config::Nginx), of(round, Config::Haproxy), of(round, Config::Router))
        else {
            continue;
        };
        if !header {
            println!("\nround       what                  router/best of nginx and haproxy   goal      met");
            header = true;
        }
        // The goals hold against the better of the two on each figure.
        let throughput = router.rps / nginx.rps.max(haproxy.rps);
        let p99 = router.p99_ms / nginx.p99_ms.min(haproxy.p99_ms);
        let cpu = router.cpu_us / nginx.cpu_us.min(haproxy.cpu_us);
        let name = round.name();
        println!("{name:<10}  throughput            {throughput:>12.2}                       >= 1.00   {}", met(throughput >= 1.0));
        println!("{name:<10}  p99 latency           {p99:>12.2}                       <= 1.00   {}", met(p99 <= 1.0));
        println!("{name:<10}  CPU per request       {cpu:>12.2}                       <= 1.00   {}", met(cpu <= 1.0));
    }
    if let (Some(nginx), Some(router)) = (of(Round::Handshakes, Config::Nginx), of(Round::Handshakes, Config::Router)) {
        let handshakes = router.rps / nginx.rps;
        println!("handshakes  new TLS handshakes/s  {handshakes:>12.2} (router/nginx)        >= 1.00   {}", met(handshakes >= 1.0));
    }
    println!(
        "\nnote: on this machine wrk, the proxy and the upstream share {} cores, so every figure includes that \
         contention; it is the same for nginx, HAProxy and the router.",
        cores()
    );
    Ok(())
}

fn print_header(args: &Args, wrk_version: &str, nginx_version: &str) {
    let command: Vec<String> = std::env::args().collect();
    println!("slipway-bench-router: Slipway's router vs nginx and HAProxy as keep-alive reverse proxies, same upstream, same run");
    println!("command:  {}", command.join(" "));
    println!("machine:  {} cores ({})", cores(), cpu_model());
    println!(
        "plan:     wrk --latency -t{} -c{} -d{}s -H 'Host: {HOST}', {} rounds interleaved (direct, nginx, haproxy, router; {}), medians",
        args.wrk_threads,
        args.connections,
        args.seconds,
        args.rounds,
        if args.no_https { "HTTP only" } else { "then https and handshakes (Connection: close) through the three proxies" }
    );
    println!(
        "sides:    upstream: hyper in-process, {}-byte body, {} threads; nginx: {nginx_version}, worker_processes auto, \
         keepalive 64; router: {:?} ({} threads); {wrk_version}\n",
        BODY.len(),
        args.upstream_threads,
        args.router_runtime,
        args.router_threads,
    );
}

/// The first line a tool prints about its version; a clear error when the
/// tool is missing.
fn tool_version(tool: &str, flags: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(tool).args(flags).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!("`{tool}` is not installed: apt-get install -y wrk nginx haproxy")
        } else {
            anyhow::anyhow!("running `{tool}`: {e}")
        }
    })?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok(text.lines().next().unwrap_or(tool).trim().to_string())
}

/// Runs wrk against `addr` for `seconds` and reads its figures.
fn wrk(args: &Args, round: Round, addr: SocketAddr, seconds: u64) -> anyhow::Result<Measure> {
    let mut command = Command::new("wrk");
    command
        .arg("--latency")
        .arg(format!("-t{}", args.wrk_threads))
        .arg(format!("-c{}", args.connections))
        .arg(format!("-d{seconds}s"))
        .args(["-H", &format!("Host: {HOST}")]);
    if round == Round::Handshakes {
        command.args(["-H", "Connection: close"]);
    }
    let out = command.arg(round.url(addr)).output().context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&text)
}

/// Requests/sec and the 50% and 99% latencies of wrk's `--latency` output.
/// Any non-2xx answer or socket error makes the run invalid.
fn parse_wrk(text: &str) -> anyhow::Result<Measure> {
    let mut rps = None;
    let (mut p50, mut p99) = (None, None);
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = parse_duration_ms(v.trim());
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = parse_duration_ms(v.trim());
        } else if line.starts_with("Non-2xx or 3xx responses") || line.starts_with("Socket errors") {
            bail!("wrk saw errors ({line}):\n{text}");
        }
    }
    match (rps, p50, p99) {
        (Some(rps), Some(p50_ms), Some(p99_ms)) => Ok(Measure { rps, p50_ms, p99_ms, cpu_us: 0.0, upstream_cpu_us: 0.0 }),
        _ => bail!("could not read Requests/sec and the 50%/99% latencies from wrk's output:\n{text}"),
    }
}

/// wrk's `512.00us`, `1.20ms`, `2.00s`, `1.00m` in milliseconds.
fn parse_duration_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = v.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        _ => return None,
    };
    Some(number * scale)
}

/// The upstream: a hyper HTTP/1.1 server answering `BODY`, on its own
/// runtime and thread.
struct Upstream {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Upstream {
    fn start(threads: usize) -> anyhow::Result<Self> {
        let listener = StdListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(threads.max(1)).thread_name("upstream").enable_all().build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("upstream".into()).spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                let accept = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else { continue };
                        let _ = stream.set_nodelay(true);
                        let service = hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
                            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(BODY))))
                        });
                        tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service));
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
            });
        })?;
        Ok(Upstream { addr, stop, thread })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Slipway's router, routing `HOST` to the upstream, on threads of its own.
struct Router {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Router {
    /// `tls`: terminate TLS with this certificate (for every name).
    fn start(upstream: SocketAddr, layout: Layout, threads: usize, tls: Option<std::sync::Arc<CertifiedKey>>) -> anyhow::Result<Self> {
        let route = Route {
            upstreams: vec![upstream],
            standby: vec![],
            route_version: 1,
            label: "bench upstream".into(),
            stats: Default::default(),
        };
        let routes = RouteHandle::new(RouteTable::new([(HOST.to_string(), route)]));
        let listener = StdListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        // The threads that do the work are named `router*`, which is how
        // their CPU time is found; `serve_threads` names its own so, and
        // the thread that accepts for them is the router's too.
        let (runtime, name) = match layout {
            Layout::Threads => (tokio::runtime::Builder::new_current_thread().enable_all().build()?, "router-accept"),
            Layout::Multi => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads.max(1))
                    .thread_name("router")
                    .enable_all()
                    .build()?;
                (rt, "bench-control")
            }
            Layout::Current => (tokio::runtime::Builder::new_current_thread().enable_all().build()?, "router"),
        };
        let options = match tls {
            Some(key) => {
                let certificates = TlsHandle::new(TlsTable::new([(TLS_NAME.to_string(), key)], []));
                ServeOptions { edge: Some(Edge::new(certificates)), terminate_tls: true, ..ServeOptions::default() }
            }
            None => ServeOptions::default(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
            let served = runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let shutdown = async {
                    let _ = stopped.await;
                };
                match layout {
                    Layout::Threads => slipway_router::serve_threads(listener, routes, options, threads, shutdown).await,
                    Layout::Multi => {
                        // `serve_with` runs as a task so that the workers share it.
                        tokio::spawn(slipway_router::serve_with(listener, routes, options, shutdown)).await?
                    }
                    Layout::Current => slipway_router::serve_with(listener, routes, options, shutdown).await,
                }
            });
            if let Err(e) = served {
                eprintln!("slipway-bench-router: the router stopped: {e}");
            }
        })?;
        Ok(Router { addr, stop, thread })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// nginx as a child process with its own prefix, configuration and logs in
/// a temporary directory; stopped when dropped.
struct Nginx {
    addr: SocketAddr,
    child: Child,
}

impl Nginx {
    /// `tls`: terminate TLS with this certificate.
    fn start(dir: &Path, upstream: SocketAddr, tls: Option<&Certificate>) -> anyhow::Result<Self> {
        let port = {
            let probe = StdListener::bind("127.0.0.1:0")?;
            probe.local_addr()?.port()
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let d = dir.display();
        let listen = match tls {
            Some(c) => format!(
                "listen {addr} ssl;\n        ssl_certificate {};\n        ssl_certificate_key {};\n        ssl_protocols TLSv1.2 TLSv1.3;",
                c.chain.display(),
                c.key_file.display()
            ),
            None => format!("listen {addr};"),
        };
        let conf = format!(
            r#"daemon off;
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    upstream bench {{
        server {upstream};
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        {listen}
        location / {{
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
        }}
    }}
}}
"#
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting nginx (apt-get install -y nginx)")?;
        Nginx::listening("nginx", Nginx { addr, child }, &dir.join("error.log"))
    }

    /// `proxy` once it listens; an error (with the end of `log`) if it
    /// exits first or does not listen within 10 s.
    fn listening(name: &str, mut proxy: Nginx, log: &Path) -> anyhow::Result<Nginx> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(proxy.addr).is_err() {
            if let Some(status) = proxy.child.try_wait()? {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                bail!("{name} exited ({status}): {log}");
            }
            if Instant::now() > deadline {
                bail!("{name} did not listen on {} within 10 s", proxy.addr);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(proxy)
    }
}

impl Nginx {
    /// CPU seconds used so far by the master and its workers.
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let master = self.child.id();
        let mut total = 0.0;
        for entry in std::fs::read_dir("/proc")? {
            let path = entry?.path();
            let Some(stat) = std::fs::read_to_string(path.join("stat")).ok().and_then(|s| parse_stat(&s)) else {
                continue;
            };
            let pid = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u32>().ok());
            if pid == Some(master) || stat.ppid == master {
                total += stat.cpu_seconds;
            }
        }
        Ok(total)
    }
}

/// CPU seconds used so far by this process's threads whose name starts
/// with `name`.
fn threads_cpu_seconds(name: &str) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for entry in std::fs::read_dir("/proc/self/task")? {
        let stat = std::fs::read_to_string(entry?.path().join("stat")).ok().and_then(|s| parse_stat(&s));
        if let Some(stat) = stat.filter(|s| s.comm.starts_with(name)) {
            total += stat.cpu_seconds;
        }
    }
    Ok(total)
}

struct Stat {
    comm: String,
    ppid: u32,
    cpu_seconds: f64,
}

/// The fields of `/proc/<pid>/stat` this bench needs (proc(5)): the name in
/// parentheses, then state, ppid, ..., utime and stime (fields 14 and 15)
/// in clock ticks, which are 100 a second on Linux.
fn parse_stat(stat: &str) -> Option<Stat> {
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(Stat { comm, ppid, cpu_seconds: ticks / 100.0 })
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its workers; SIGKILL would orphan them.
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HAProxy as a child process (foreground, its own configuration in a
/// temporary directory), with the same job as nginx: keep-alive to the
/// upstream, connections reused. Stopped when dropped (it is a `Nginx`
/// child in all but its configuration: the same start, CPU and stop).
struct Haproxy(Nginx);

impl Haproxy {
    /// `tls`: terminate TLS with this certificate.
    fn start(dir: &Path, upstream: SocketAddr, tls: Option<&Certificate>) -> anyhow::Result<Self> {
        let port = {
            let probe = StdListener::bind("127.0.0.1:0")?;
            probe.local_addr()?.port()
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let bind = match tls {
            Some(c) => format!("{addr} ssl crt {} alpn http/1.1", c.combined.display()),
            None => addr.to_string(),
        };
        let conf = format!(
            r#"global
    maxconn 8000
    nbthread 2
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
    http-reuse always
frontend bench
    bind {bind}
    option forwardfor
    default_backend upstream
backend upstream
    server one {upstream}
"#
        );
        let conf_path = dir.join("haproxy.cfg");
        std::fs::write(&conf_path, conf)?;
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.log"))?)
            .spawn()
            .context("starting haproxy (apt-get install -y haproxy)")?;
        let log = dir.join("haproxy.log");
        let proxy = Nginx { addr, child };
        Ok(Haproxy(Nginx::listening("haproxy", proxy, &log)?))
    }
}

impl Haproxy {
    /// pingora (`bench/pingora`'s binary) as a child process: the same
    /// start, CPU and stop as HAProxy's.
    fn pingora(binary: &Path, dir: &Path, upstream: SocketAddr) -> anyhow::Result<Self> {
        let port = StdListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = dir.join("pingora.log");
        let child = Command::new(binary)
            .args([addr.to_string(), upstream.to_string(), "2".into()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting pingora ({}; build it in bench/pingora)", binary.display()))?;
        Ok(Haproxy(Nginx::listening("pingora", Nginx { addr, child }, &log)?))
    }
}

/// The HTTPS rounds' certificate, made with `openssl` for the run: an
/// ECDSA P-256 key (what ACME CAs issue most), self-signed for `TLS_NAME`.
struct Certificate {
    /// The PEM certificate (nginx's `ssl_certificate`).
    chain: std::path::PathBuf,
    /// The PEM key (nginx's `ssl_certificate_key`).
    key_file: std::path::PathBuf,
    /// Certificate and key in one file (HAProxy's `crt`).
    combined: std::path::PathBuf,
    /// The same, loaded for the router.
    key: std::sync::Arc<CertifiedKey>,
}

impl Certificate {
    fn make(dir: &Path) -> anyhow::Result<Certificate> {
        let (chain, key_file, combined) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("combined.pem"));
        let made = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"])
            .args(["-subj", &format!("/CN={TLS_NAME}"), "-addext", &format!("subjectAltName=DNS:{TLS_NAME}")])
            .arg("-keyout")
            .arg(&key_file)
            .arg("-out")
            .arg(&chain)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running openssl (apt-get install -y openssl)")?;
        if !made.success() {
            bail!("openssl could not make the benchmark's certificate ({made})");
        }
        let (cert_pem, key_pem) = (std::fs::read(&chain)?, std::fs::read(&key_file)?);
        std::fs::write(&combined, [cert_pem.as_slice(), key_pem.as_slice()].concat())?;
        let key = slipway_router::certified_key(&cert_pem, &key_pem).map_err(|e| anyhow::anyhow!("the benchmark's certificate: {e}"))?;
        Ok(Certificate { chain, key_file, combined, key })
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// 41234.6 -> "41,235".
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, model)| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 5s test @ http://127.0.0.1:8080/
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   603.39us  301.05us  12.11ms   91.23%
    Req/Sec    41.23k     2.10k   45.67k    70.00%
  Latency Distribution
     50%  551.00us
     75%  682.00us
     90%  845.00us
     99%    1.85ms
  410304 requests in 5.00s, 66.92MB read
Requests/sec:  82034.71
Transfer/sec:     13.38MB
";

    #[test]
    fn wrk_output_is_read() {
        let m = parse_wrk(WRK).unwrap();
        assert!((m.rps - 82034.71).abs() < 1e-6);
        assert!((m.p50_ms - 0.551).abs() < 1e-9);
        assert!((m.p99_ms - 1.85).abs() < 1e-9);
    }

    #[test]
    fn wrk_errors_invalidate_a_run() {
        let with_errors = WRK.replace("Requests/sec", "  Non-2xx or 3xx responses: 12\nRequests/sec");
        assert!(parse_wrk(&with_errors).is_err());
        assert!(parse_wrk("garbage").is_err());
    }

    #[test]
    fn proc_stat_is_read() {
        let stat = "4242 (router) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1 2 3";
        let s = parse_stat(stat).unwrap();
        assert_eq!((s.comm.as_str(), s.ppid), ("router", 1));
        assert!((s.cpu_seconds - 3.0).abs() < 1e-9);
    }

    #[test]
    fn durations_in_every_unit() {
        assert_eq!(parse_duration_ms("2.00s"), Some(2000.0));
        assert_eq!(parse_duration_ms("1.00m"), Some(60_000.0));
        assert_eq!(parse_duration_ms("12"), None);
    }
}
