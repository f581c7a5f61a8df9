//! The dashboard in a real browser: `slipway all-in-one` (SQLite, the
//! in-process queue, Docker) serves it; headless Chromium, driven through
//! chromedriver, opens it, signs in when the API asks for a token, presses
//! Deploy for the example app (examples/hello), watches the deployment
//! succeed on the page without a reload (the live stream), opens its event
//! timeline and checks the hashes. Then the views and actions added since:
//! the environment's history charts (uPlot), its settings (a secret set
//! from the page is never shown back), the environments-at-a-glance page
//! with the router's traffic chart (requests sent through the router
//! show up), approving, rejecting and cancelling a deployment waiting for
//! approval (self-approval refused), and creating a project (admin scope
//! only). Screenshots land in target/test-artifacts/ and target/screenshots/.
//!
//! Chromium missing fails the test under CI=true and skips it elsewhere.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use slipway_tests::webdriver::{find_browser, Browser};
use slipway_tests::*;

/// `slipway all-in-one` on its own data directory and ports.
struct Slipway {
    child: Child,
    data: tempfile::TempDir,
    api: std::net::SocketAddr,
    router: std::net::SocketAddr,
    project: String,
}

/// The environment every `slipway` process of the test shares.
fn env(data: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("SLIPWAY_DATABASE", format!("sqlite://{}", data.join("slipway.db").display())),
        ("SLIPWAY_QUEUE", "memory".into()),
        ("SLIPWAY_DATA_DIR", data.display().to_string()),
        ("SLIPWAY_LOG", "warn".into()),
    ]
}

impl Slipway {
    fn start(project: &str) -> Slipway {
        let data = tempfile::tempdir().unwrap();
        let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let (api, router) = (free(), free());
        let log = std::fs::File::create(data.path().join("slipway.log")).unwrap();
        let args = ["all-in-one", "--listen", &api.to_string(), "--router", &router.to_string(), "--drain", "1"];
        let child = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args(args)
            .envs(env(data.path()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Slipway { child, data, api, router, project: project.into() }
    }

    /// Runs a `slipway` verb against the same database.
    fn verb(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_slipway")).args(args).envs(env(self.data.path())).output().unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("slipway.log")).unwrap_or_default()
    }
}

impl Drop for Slipway {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
        remove_containers_with_label(&format!("slipway.project={}", self.project));
        // The images this test built (their tags name the project).
        if let Ok(out) = Command::new("docker").args(["images", "-q", &format!("slipway/{}", self.project)]).output() {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect();
            if !ids.is_empty() {
                let _ = Command::new("docker").arg("rmi").arg("-f").args(&ids).output();
            }
        }
    }
}

/// examples/hello as a Git repository, with the static busybox it copies in.
fn example_app() -> AppRepo {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello");
    let mut files = BTreeMap::new();
    for name in ["Dockerfile", "slipway.toml", ".dockerignore", "www/index.html"] {
        files.insert(name.to_string(), std::fs::read(example.join(name)).unwrap());
    }
    files.insert("busybox".into(), std::fs::read("/bin/busybox").expect("/bin/busybox (apt-get install busybox-static)"));
    let repo = AppRepo::new();
    repo.commit(&files, "example app");
    repo
}

fn artifacts() -> PathBuf {
    let target =
        option_env!("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.canonicalize().unwrap_or(dir)
}

/// Saved under the target dir's `test-artifacts/` and `screenshots/`.
async fn save_screenshot(browser: &Browser, name: &str) -> PathBuf {
    let path = artifacts().join(name);
    let png = browser.screenshot().await.unwrap();
    std::fs::write(&path, &png).unwrap();
    let shots = artifacts().join("../screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    std::fs::write(shots.join(name), &png).unwrap();
    println!("screenshot: {}", path.display());
    path
}

/// A token with the deploy scope, made by `slipway token create` (the API
/// requires one).
fn deploy_token(slipway: &Slipway) -> Option<String> {
    new_token(slipway, "dashboard-test", "deploy")
}

fn new_token(slipway: &Slipway, name: &str, scope: &str) -> Option<String> {
    let out = slipway.verb(&["token", "create", name, "--scope", scope]);
    assert!(out.status.success(), "slipway token create failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let token = text.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').find(|w| w.starts_with("slw_") && w.len() == 68);
    Some(token.unwrap_or_else(|| panic!("no slw_ token in: {text}")).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_deploys_and_follows_a_deployment_live_and_shows_its_timeline() {
    let Some((chromium, chromedriver)) = find_browser() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium and chromedriver are needed (apt-get install chromium chromium-driver, or scripts/services)"
        );
        eprintln!("skipped: chromium or chromedriver is not installed (scripts/services installs them)");
        return;
    };
    require_docker();
    let project = format!("web{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
    let repo = example_app();
    let slipway = Slipway::start(&project);
    // The dashboard's page needs no token, with authentication or without.
    let up = eventually("the dashboard to answer", Duration::from_secs(30), || async {
        get_via(slipway.api, "localhost", "/", Duration::from_secs(2)).await.ok().filter(|(s, _)| *s == 200)
    });
    up.await;
    let created = slipway.verb(&["project", "create", &project, "--repo", &repo.path().display().to_string()]);
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let set = slipway.verb(&["env", "set", &project, "test", "GREETING=browser"]);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    let token = deploy_token(&slipway);
    let admin = new_token(&slipway, "dashboard-admin", "admin").expect("an admin token");
    let protect = slipway.verb(&["env", "protect", &project, "live", "--approvals", "1"]);
    assert!(protect.status.success(), "{}", String::from_utf8_lossy(&protect.stderr));

    let log = slipway.data.path().join("chromedriver.log");
    let browser = Browser::start(&chromium, &chromedriver, &log, 1280, 1000).await.unwrap();
    let mut outcome = drive(&browser, &slipway, token.as_deref()).await;
    if outcome.is_ok() {
        outcome = views_and_actions(&browser, &slipway, &admin).await;
    }
    if outcome.is_err() {
        save_screenshot(&browser, "dashboard-failure.png").await;
    }
    browser.quit().await;
    if let Err(e) = outcome {
        panic!("{e}\n--- slipway log:\n{}", slipway.log());
    }

    // The CLI as a client of the same API follows a deployment with its
    // build log, which arrives over the live stream (`--logs`).
    let (server, token) = (format!("http://{}", slipway.api), token.expect("a deploy token"));
    let out = slipway.verb(&["--server", &server, "--token", &token, "deploy", &project, "test", "--no-cache", "--logs"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?}\n{text}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    // Each log line shows under the step that wrote it (between its `→` and
    // its `✓`): the stream carries the events and the lines in the order
    // they happened.
    assert!(text.lines().any(|l| l.starts_with("     | ") && l.contains("FROM")), "no build log line in:\n{text}");
    let mut open: Option<&str> = None;
    for line in text.lines() {
        if let Some(step) = line.strip_prefix("→ ") {
            open = Some(step);
        } else if line.starts_with('✓') || line.starts_with('✗') {
            open = None;
        } else if let Some(logged) = line.strip_prefix("     | ") {
            let step = if logged.contains("migrating") { "release" } else { "build" };
            assert_eq!(open, Some(step), "log line `{line}` outside its step:\n{text}");
        }
    }
    assert!(text.contains("is served at http://127.0.0.1:"), "{text}");
}

/// Evaluates `script` until it is truthy, navigating to `hash` again
/// between tries (a view that reads once, such as the glance page).
async fn wait_on_view(browser: &Browser, what: &str, hash: &str, script: &str) -> Result<Value, String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        browser.run(&format!("if (location.hash !== '{hash}') location.hash = '{hash}'; else route();"), json!([])).await?;
        if let Ok(v) = browser.wait_for(what, Duration::from_secs(3), script).await {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("timed out after 60 s waiting for {what}"));
        }
    }
}

/// The charts, settings, glance page and actions, after `drive` deployed
/// `test` once (signed in with the deploy token).
async fn views_and_actions(browser: &Browser, slipway: &Slipway, admin: &str) -> Result<(), String> {
    let project = &slipway.project;
    let env_hash = format!("#/env/{project}/test");

    // History: the timeline holds the one deployment that succeeded, the
    // step chart its steps.
    browser.run(&format!("location.hash = '{env_hash}'"), json!([])).await?;
    let charts = browser
        .wait_for(
            "the history charts",
            Duration::from_secs(20),
            "const t = document.getElementById('chart-timeline'), s = document.getElementById('chart-steps');
             if (!t || !s || !t.querySelector('canvas') || !s.querySelector('canvas')) return null;
             return {succeeded: t.dataset.succeeded, failed: t.dataset.failed, deployments: s.dataset.deployments, steps: s.dataset.steps};",
        )
        .await?;
    assert_eq!((charts["succeeded"].as_str(), charts["failed"].as_str()), (Some("1"), Some("0")), "{charts}");
    assert!(charts["deployments"].as_str().is_some_and(|n| n.parse::<u32>().unwrap_or(0) >= 1), "{charts}");
    assert!(charts["steps"].as_str().is_some_and(|s| s.contains("build") && s.contains("cutover")), "{charts}");

    // Settings: GREETING (set by the CLI) is listed; a deploy token may not change them.
    browser.wait_for("the settings", Duration::from_secs(10), "return !!document.querySelector('#settings tr[data-key=GREETING]')").await?;
    let disabled = browser.run("return document.getElementById('setting-save').disabled", json!([])).await?;
    assert_eq!(disabled, json!(true), "a deploy token cannot change settings");
    browser.run("window.scrollTo(0, document.getElementById('chart-timeline').offsetTop - 80)", json!([])).await?;
    save_screenshot(browser, "dashboard-history.png").await;

    // Traffic through the router shows up on the glance page as a chart.
    let host = format!("{project}-test.localhost");
    for _ in 0..40 {
        let (status, _) = get_via(slipway.router, &host, "/", Duration::from_secs(2)).await?;
        assert_eq!(status, 200, "the router serves the release");
    }
    let row = format!("#glance tr[data-project='{project}'][data-env='test']");
    let glance = wait_on_view(
        browser,
        "the router's traffic on the glance page",
        "#/",
        &format!(
            "const r = document.querySelector(\"{row}\"); const f = r && r.querySelector('.traffic-figures');
             if (!f || !(Number(f.dataset.requests) >= 40) || !r.querySelector('.spark canvas')) return null;
             return {{requests: Number(f.dataset.requests), live: r.dataset.live, text: r.textContent}};"
        ),
    )
    .await?;
    assert_eq!(glance["live"], json!("running"), "{glance}");
    assert!(glance["text"].as_str().is_some_and(|t| t.contains("req/s")), "{glance}");
    let live_row = browser
        .run(&format!("return document.querySelector(\"#glance tr[data-project='{project}'][data-env='live']\")?.textContent"), json!([]))
        .await?;
    assert!(live_row.as_str().is_some_and(|t| t.contains("nothing served")), "{live_row}");
    save_screenshot(browser, "dashboard-environments.png").await;

    // A deploy token: creating a project is an admin's.
    browser.run("location.hash = '#/projects'", json!([])).await?;
    let create = browser
        .wait_for(
            "the create-project form",
            Duration::from_secs(10),
            "const b = document.getElementById('project-create'); return b && {disabled: b.disabled, title: b.title}",
        )
        .await?;
    assert_eq!(create["disabled"], json!(true), "{create}");

    // `live` needs one approval: the deployment waits, and its requester may not approve it.
    let live_hash = format!("#/env/{project}/live");
    browser.run(&format!("location.hash = '{live_hash}'"), json!([])).await?;
    browser
        .wait_for("the Deploy button", Duration::from_secs(10), "const b = document.getElementById('deploy'); return b && !b.disabled")
        .await?;
    browser.click("#deploy").await?;
    let awaiting = "const r = document.querySelector('tr.deployment'); return r && r.querySelector('.act-approve') && r.textContent.includes('awaiting approval') && r.dataset.deployment";
    let first = browser.wait_for("a deployment awaiting approval", Duration::from_secs(20), awaiting).await?;
    browser.click("tr.deployment .act-approve").await?;
    let refused = browser
        .wait_for(
            "self-approval refused",
            Duration::from_secs(10),
            "const n = document.getElementById('notice'); return !n.hidden && n.textContent",
        )
        .await?;
    assert!(refused.as_str().is_some_and(|t| t.to_lowercase().contains("approve")), "{refused}");
    save_screenshot(browser, "dashboard-approval.png").await;
    // Its requester may cancel it: it fails, nothing was deployed.
    let first = first.as_str().unwrap_or_default().to_string();
    browser.click(&format!("tr.deployment[data-deployment='{first}'] .act-cancel")).await?;
    let cancelled = browser
        .wait_for(
            "the cancelled deployment to fail",
            Duration::from_secs(20),
            &format!("const r = document.querySelector(\"tr.deployment[data-deployment='{first}']\"); return r && r.dataset.status === 'failed' && r.textContent"),
        )
        .await?;
    assert!(cancelled.as_str().is_some_and(|t| t.contains("cancel")), "{cancelled}");
    save_screenshot(browser, "dashboard-actions.png").await;
    // Two more, for another person to reject and approve.
    let newest_other_than = |seen: Vec<String>| {
        format!(
            "const r = document.querySelector('tr.deployment'); const seen = {};
             return r && !seen.includes(r.dataset.deployment) && r.querySelector('.act-approve') && r.dataset.deployment",
            serde_json::to_string(&seen).unwrap_or_default()
        )
    };
    browser.click("#deploy").await?;
    let second = browser.wait_for("a second deployment", Duration::from_secs(20), &newest_other_than(vec![first.clone()])).await?;
    let second = second.as_str().unwrap_or_default().to_string();
    browser.click("#deploy").await?;
    let third =
        browser.wait_for("a third deployment", Duration::from_secs(20), &newest_other_than(vec![first.clone(), second.clone()])).await?;
    let third = third.as_str().unwrap_or_default().to_string();

    // Signed in as the admin (another actor than their requester).
    browser.click("#sign-out").await?;
    browser
        .wait_for(
            "the sign-in box",
            Duration::from_secs(10),
            "return !document.getElementById('login').hidden || !!document.getElementById('sign-in')",
        )
        .await?;
    let login_shown = browser.run("return !document.getElementById('login').hidden", json!([])).await?;
    if login_shown != json!(true) {
        browser.click("#sign-in").await?;
    }
    browser.type_into("#token", admin).await?;
    browser.click("#login-submit").await?;
    browser.wait_for("admin scope", Duration::from_secs(10), "return document.getElementById('whoami')?.dataset.scope === 'admin'").await?;
    // Rejected: it fails naming who rejected it.
    browser.run(&format!("location.hash = '#/deployment/{second}'"), json!([])).await?;
    browser
        .wait_for(
            "the Reject button",
            Duration::from_secs(10),
            "const b = document.querySelector('#summary .act-reject'); return b && !b.disabled",
        )
        .await?;
    browser.click("#summary .act-reject").await?;
    let rejected = browser
        .wait_for(
            "the rejected deployment to fail",
            Duration::from_secs(30),
            "const s = document.getElementById('summary'); return s && s.dataset.status === 'failed' && s.textContent",
        )
        .await?;
    // It never started a step, and the page does not name one.
    assert!(rejected.as_str().is_some_and(|t| t.contains("before it started: rejected by token:dashboard-admin")), "{rejected}");
    // Approved: it starts its first step; then cancelled rather than built.
    browser.run(&format!("location.hash = '#/deployment/{third}'"), json!([])).await?;
    browser
        .wait_for(
            "the Approve button",
            Duration::from_secs(10),
            "const b = document.querySelector('#summary .act-approve'); return b && !b.disabled",
        )
        .await?;
    browser.click("#summary .act-approve").await?;
    browser
        .wait_for(
            "the approved deployment to start its first step",
            Duration::from_secs(30),
            "return [...document.querySelectorAll('#steps tr')].some(r => r.dataset.state === 'running' || r.dataset.state === 'done')",
        )
        .await?;
    save_screenshot(browser, "dashboard-approved.png").await;
    browser.click("#summary .act-cancel").await?;
    browser
        .wait_for(
            "the approved deployment, cancelled",
            Duration::from_secs(60),
            "return document.getElementById('summary')?.dataset.status === 'failed'",
        )
        .await?;
    // A step it never reached is skipped, the cutover too (not pending for ever).
    let cutover = browser
        .wait_for(
            "the cancelled deployment's cutover",
            Duration::from_secs(10),
            "const r = document.querySelector('#steps tr[data-step=\"cutover\"]'); return r && r.dataset.state",
        )
        .await?;
    if cutover != json!("skipped") {
        return Err(format!("a failed deployment's cutover shows {cutover}, not skipped"));
    }
    // A deployment that does not exist, or an id that is none: the page
    // says so, and shows no deployment to cancel.
    for (id, says) in [("01a244ee-5953-72fa-a2d8-000000000000", "no deployment"), ("bogus", "is not a deployment id")] {
        browser.run(&format!("location.hash = '#/deployment/{id}'"), json!([])).await?;
        // Until the page has its answer: past "Loading…", and past the
        // previous id's page (the hash change renders asynchronously).
        let answered = format!(
            "const s = document.getElementById('summary'); \
             return s && !s.dataset.status && !document.querySelector('.act-cancel') && s.textContent.includes('{says}') && s.textContent"
        );
        browser.wait_for(&format!("#/deployment/{id} to say `{says}`"), Duration::from_secs(10), &answered).await?;
    }

    // A secret set from the page is never shown back.
    browser.run(&format!("location.hash = '{env_hash}'"), json!([])).await?;
    browser
        .wait_for(
            "the settings form",
            Duration::from_secs(10),
            "const b = document.getElementById('setting-save'); return b && !b.disabled",
        )
        .await?;
    browser.type_into("#setting-key", "API_KEY").await?;
    browser.type_into("#setting-value", "s3cret-from-the-page").await?;
    browser.click("#setting-save").await?;
    let secret = browser
        .wait_for(
            "the secret listed",
            Duration::from_secs(10),
            "const r = document.querySelector('#settings tr[data-key=API_KEY]'); return r && r.dataset.secret",
        )
        .await?;
    assert_eq!(secret, json!("yes"));
    let page = browser.run("return document.documentElement.outerHTML + JSON.stringify(localStorage)", json!([])).await?;
    assert!(!page.as_str().unwrap_or_default().contains("s3cret-from-the-page"), "the secret's value is on the page");
    let shown = slipway.verb(&["env", "list", project, "test"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("API_KEY") && !shown.contains("s3cret-from-the-page"), "{shown}");
    save_screenshot(browser, "dashboard-settings.png").await;

    // Create a project.
    let repo = example_app();
    let other = format!("{project}b");
    browser.run("location.hash = '#/projects'", json!([])).await?;
    browser
        .wait_for(
            "the create button",
            Duration::from_secs(10),
            "const b = document.getElementById('project-create'); return b && !b.disabled",
        )
        .await?;
    browser.type_into("#project-name", &other).await?;
    browser.type_into("#project-repo", &repo.path().display().to_string()).await?;
    browser.click("#project-create").await?;
    browser
        .wait_for(
            "the new project listed",
            Duration::from_secs(10),
            &format!("return !!document.querySelector(\"section[data-project='{other}']\")"),
        )
        .await?;
    save_screenshot(browser, "dashboard-projects.png").await;
    let listed = slipway.verb(&["project", "list"]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&other), "{}", String::from_utf8_lossy(&listed.stdout));
    Ok(())
}

async fn drive(browser: &Browser, slipway: &Slipway, token: Option<&str>) -> Result<(), String> {
    let base = format!("http://{}", slipway.api);
    let project = &slipway.project;
    browser.goto(&format!("{base}/")).await?;
    browser
        .wait_for("the page's script to start", Duration::from_secs(10), "return document.getElementById('identity').childElementCount > 0")
        .await?;
    let login_shown = browser.run("return !document.getElementById('login').hidden", json!([])).await?;
    match token {
        Some(token) => {
            assert_eq!(login_shown, json!(true), "the API needs a token, so the page asks for one");
            browser.type_into("#token", token).await?;
            browser.click("#login-submit").await?;
            let scope = browser
                .wait_for("whoami after signing in", Duration::from_secs(10), "return document.getElementById('whoami')?.dataset.scope")
                .await?;
            assert_eq!(scope, json!("deploy"));
        }
        None => {
            assert_eq!(login_shown, json!(false), "without authentication the page asks for no token");
            // The sign-in box still works: the token is kept and sent (and ignored).
            browser.click("#sign-in").await?;
            browser.type_into("#token", &format!("slw_{}", "0".repeat(64))).await?;
            browser.click("#login-submit").await?;
            browser.wait_for("the sign-out button", Duration::from_secs(10), "return !!document.getElementById('sign-out')").await?;
            let kept = browser.run("return localStorage.getItem('slipway.token')", json!([])).await?;
            assert_eq!(kept.as_str().map(|t| t.len()), Some(68), "the token is kept in local storage: {kept}");
        }
    }

    // The first page lists every environment; Projects -> the environment,
    // by the links a user clicks.
    browser
        .wait_for(
            "the environments page",
            Duration::from_secs(10),
            &format!("return !!document.querySelector(\"#glance tr[data-project='{project}'][data-env='test']\")"),
        )
        .await?;
    browser.click("#nav-projects").await?;
    let env_link = format!("section[data-project='{project}'] tr[data-env='test'] a");
    browser
        .wait_for("the project's environments", Duration::from_secs(10), &format!("return !!document.querySelector(\"{env_link}\")"))
        .await?;
    browser.click(&env_link).await?;
    browser
        .wait_for("the Deploy button", Duration::from_secs(10), "const b = document.getElementById('deploy'); return b && !b.disabled")
        .await?;

    // The environment's custom domains are listed (none yet); adding needs admin scope.
    browser
        .wait_for(
            "the domains card",
            Duration::from_secs(10),
            "return document.getElementById('domains')?.textContent.includes('No custom domain')",
        )
        .await?;

    // A marker a reload would wipe out.
    browser.run("window.slipwayNoReload = 'still here'", json!([])).await?;
    browser.click("#deploy").await?;
    let mut states_seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    let row = loop {
        let row = browser
            .run(
                "const r = document.querySelector('tr.deployment'); if (!r) return null;
                 return {id: r.dataset.deployment, status: r.dataset.status,
                         build: r.querySelector('[data-step=build]')?.dataset.state,
                         steps: [...r.querySelectorAll('.step')].map(s => [s.dataset.step, s.dataset.state])};",
                json!([]),
            )
            .await?;
        if let Some(build) = row["build"].as_str() {
            if states_seen.last().map(String::as_str) != Some(build) {
                states_seen.push(build.to_string());
            }
        }
        match row["status"].as_str() {
            Some("succeeded") => break row,
            Some("failed") => return Err(format!("the deployment failed: {row}")),
            _ if tokio::time::Instant::now() > deadline => return Err(format!("not succeeded after 240 s: {row}")),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    println!("the build step's states as the page showed them: {states_seen:?}");
    let no_reload = browser.run("return window.slipwayNoReload", json!([])).await?;
    assert_eq!(no_reload, json!("still here"), "the page reloaded");
    let steps: BTreeMap<String, String> =
        serde_json::from_value::<Vec<(String, String)>>(row["steps"].clone()).map_err(|e| e.to_string())?.into_iter().collect();
    for step in ["check_services", "checkout", "build", "deploy", "release", "processes", "health_check", "cutover"] {
        assert_eq!(steps.get(step).map(String::as_str), Some("done"), "step {step} in {steps:?}");
    }
    let id = row["id"].as_str().ok_or("the row names no deployment")?.to_string();
    // Shown as its first 8 characters (a UUIDv7's time) and its last 4.
    let short = format!("{}…{}", &id[..8], &id[id.len() - 4..]);
    let active = format!("return document.querySelector('#active a')?.textContent === '{short}'");
    browser.wait_for("the new release to show as active", Duration::from_secs(10), &active).await?;
    save_screenshot(browser, "dashboard-environment.png").await;

    // The deployment's page, then its timeline. The release command prints
    // the GREETING setting's value, which the stored log keeps scrubbed
    // (a worker scrubs every value it resolved from what it records).
    browser.click(&format!("tr.deployment[data-deployment='{id}'] a")).await?;
    browser
        .wait_for(
            "the release log",
            Duration::from_secs(10),
            "return document.getElementById('log')?.textContent.includes('migrating for ***')",
        )
        .await?;
    browser.click("#timeline-tab").await?;
    let events = browser
        .wait_for(
            "the timeline to end with DeploymentSucceeded",
            Duration::from_secs(10),
            "const rows = [...document.querySelectorAll('#timeline tr.event')];
             if (!rows.some(r => r.dataset.type === 'DeploymentSucceeded')) return null;
             return rows.map(r => ({type: r.dataset.type, actor: r.children[3].textContent, hash: r.querySelector('.hash').textContent}));",
        )
        .await?;
    let events: Vec<Value> = events.as_array().cloned().unwrap_or_default();
    assert!(events.len() >= 15, "a whole deployment has more events: {events:?}");
    assert_eq!(events[0]["type"], "DeploymentRequested");
    for e in &events {
        let hash = e["hash"].as_str().unwrap_or_default();
        assert!(hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()), "hash {hash:?} of {e}");
    }
    let actors: Vec<&str> = events.iter().filter_map(|e| e["actor"].as_str()).collect();
    assert!(actors.contains(&"engine") && actors.iter().any(|a| a.starts_with("worker:")), "{actors:?}");
    let shot = save_screenshot(browser, "dashboard-timeline.png").await;
    assert!(std::fs::metadata(&shot).map(|m| m.len() > 10_000).unwrap_or(false), "the screenshot is empty");
    Ok(())
}
