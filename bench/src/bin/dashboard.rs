//! `slipway-bench-dashboard`: the dashboard's first paint and its
//! environments page (every environment's status and traffic chart, the
//! first view) in headless Chromium, on a large installation next to a
//! small one measured in the same run.
//!
//! Each installation is a fresh SQLite store filled with canned history
//! (`canned.rs`: whole projects with 50 deployments each over `test` and
//! `live`) and an hour of per-minute router traffic samples for every
//! environment; the API and the dashboard are served on loopback as
//! `slipway server` serves them. Chromium (through chromedriver, as the
//! dashboard's browser test drives it) loads the page signed in with an
//! admin token `--samples` times per installation, alternating, and reads
//! from the page: first contentful paint (`performance` paint timing), and
//! the environments page drawn (navigation start to the table filled,
//! `window.slipwayGlanceAt`).
//! Goal: both under 1 s with 200 projects (10,000 deployments).
//!
//! Run: `cargo run --release -p slipway-bench --bin slipway-bench-dashboard -- --projects 200`

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context};
use clap::Parser;
use serde_json::json;
use slipway_engine::api::{self, ApiConfig};
use slipway_engine::{requests, web};
use slipway_proto::event::TokenScope;
use slipway_store::traffic::{minute_of, TrafficSample};
use slipway_store::{EventStore, SqliteStore};
use slipway_tests::webdriver::{find_browser, Browser};

#[path = "../canned.rs"]
mod canned;

const GOAL_MS: f64 = 1000.0;

#[derive(Parser)]
#[command(about = "dashboard first paint and environments page in headless Chromium: many projects vs few")]
struct Args {
    /// Projects of the large installation (50 deployments each).
    #[arg(long, default_value_t = 200)]
    projects: usize,
    /// Projects of the small one.
    #[arg(long, default_value_t = 4)]
    small_projects: usize,
    /// Page loads per installation.
    #[arg(long, default_value_t = 7)]
    samples: usize,
}

/// One installation being served.
struct Site {
    projects: usize,
    url: String,
    token: String,
    _dir: tempfile::TempDir,
}

async fn site(projects: usize) -> anyhow::Result<Site> {
    let dir = tempfile::tempdir()?;
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(&dir.path().join("slipway.db")).await?);
    canned::fill(&*store, projects * canned::events_per_project()).await?;
    let now = minute_of(chrono::Utc::now().timestamp());
    let mut samples = Vec::new();
    for p in 0..projects {
        for env in ["test", "live"] {
            for m in 0..60 {
                let requests = 600 + ((p * 7 + m as usize * 13) % 300) as i64;
                samples.push(TrafficSample {
                    router: "r1".into(),
                    project: format!("app-{p:05}"),
                    environment: env.into(),
                    minute: now - m,
                    requests,
                    errors: if m % 17 == 0 { requests / 20 } else { 0 },
                });
            }
        }
    }
    for chunk in samples.chunks(2000) {
        store.operational().record_traffic(chunk, now - 120).await?;
    }
    let token = requests::issue_token(&*store, "bench", "dashboard-bench", TokenScope::Admin).await?.map_err(|r| anyhow::anyhow!("{r}"))?;
    let config = ApiConfig { data_dir: dir.path().to_path_buf(), ..Default::default() };
    let app = api::app_with(store.clone(), config).merge(web::routes());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    // The read models catch up on the first read: not what is measured.
    let started = std::time::Instant::now();
    let client = environments_listed(&url, &token).await?;
    eprintln!(
        "{projects} projects: the first GET /api/environments (read models catching up) took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    ensure!(client == projects * 2, "the environments page lists {client} environments, not {}", projects * 2);
    Ok(Site { projects, url, token, _dir: dir })
}

/// `GET /api/environments` once (the read models catch up); how many it lists.
async fn environments_listed(url: &str, token: &str) -> anyhow::Result<usize> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let request = hyper::Request::get(format!("{url}api/environments"))
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))?;
    let response = client.request(request).await?;
    ensure!(response.status() == 200, "GET /api/environments answered {}", response.status());
    let body = response.into_body().collect().await?.to_bytes();
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
    Ok(listed.len())
}

/// One page load: (first contentful paint, environments page drawn), in ms
/// from navigation start.
async fn load(browser: &Browser, site: &Site, n: usize) -> anyhow::Result<(f64, f64)> {
    // A query of its own each time: a URL differing only in its fragment
    // would not load the page again.
    browser.goto(&format!("{}?load={n}#/", site.url)).await.map_err(anyhow::Error::msg)?;
    let drawn = browser
        .wait_for(
            "the environments page",
            Duration::from_secs(30),
            "const p = performance.getEntriesByType('paint').find(e => e.name === 'first-contentful-paint');
             return window.slipwayGlanceAt && p && {paint: p.startTime, glance: window.slipwayGlanceAt,
               rows: document.querySelectorAll('#glance tr[data-env]').length};",
        )
        .await
        .map_err(anyhow::Error::msg)?;
    let rows = drawn["rows"].as_u64().unwrap_or(0) as usize;
    ensure!(rows == site.projects * 2, "the page shows {rows} environments, not {}", site.projects * 2);
    Ok((drawn["paint"].as_f64().unwrap_or(f64::NAN), drawn["glance"].as_f64().unwrap_or(f64::NAN)))
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (chromium, chromedriver) = find_browser().context("chromium and chromedriver are needed (scripts/services installs them)")?;
    let large = site(args.projects).await?;
    let small = site(args.small_projects).await?;
    let log = tempfile::NamedTempFile::new()?;
    let browser = Browser::start(&chromium, &chromedriver, log.path(), 1280, 1000).await.map_err(anyhow::Error::msg)?;
    let mut results = [(Vec::new(), Vec::new()), (Vec::new(), Vec::new())];
    let outcome: anyhow::Result<()> = async {
        for site in [&large, &small] {
            // Sign in once per origin: the token lives in local storage.
            browser.goto(&site.url).await.map_err(anyhow::Error::msg)?;
            browser.run("localStorage.setItem('slipway.token', arguments[0])", json!([site.token])).await.map_err(anyhow::Error::msg)?;
            load(&browser, site, 0).await?; // warm-up
        }
        for n in 1..=args.samples {
            for (i, site) in [&large, &small].into_iter().enumerate() {
                let (paint, glance) = load(&browser, site, n).await?;
                results[i].0.push(paint);
                results[i].1.push(glance);
            }
        }
        Ok(())
    }
    .await;
    browser.quit().await;
    outcome?;
    // The API's part of the page: GET /api/environments alone.
    let mut api_ms = Vec::new();
    for site in [&large, &small] {
        let mut times = Vec::new();
        for _ in 0..args.samples {
            let started = std::time::Instant::now();
            environments_listed(&site.url, &site.token).await?;
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        api_ms.push(median(times));
    }
    let [(lp, lg), (sp, sg)] = results;
    let (lp, lg, sp, sg) = (median(lp), median(lg), median(sp), median(sg));
    println!("slipway-bench-dashboard: {} samples each, median ms from navigation start (headless Chromium)", args.samples);
    println!("{:<28} {:>14} {:>14} {:>8}", "", format!("{} projects", args.projects), format!("{} projects", args.small_projects), "ratio");
    println!("{:<28} {:>14.0} {:>14.0} {:>8.2}", "first contentful paint", lp, sp, lp / sp);
    println!("{:<28} {:>14.0} {:>14.0} {:>8.2}", "environments page drawn", lg, sg, lg / sg);
    println!("{:<28} {:>14.0} {:>14.0} {:>8.2}", "of which GET /api/environments", api_ms[0], api_ms[1], api_ms[0] / api_ms[1]);
    println!("({} deployments in the large installation)", args.projects * canned::DEPLOYMENTS_PER_PROJECT);
    let ok = lp < GOAL_MS && lg < GOAL_MS;
    println!("goal: both under {GOAL_MS:.0} ms with {} projects: {}", args.projects, if ok { "met" } else { "MISSED" });
    ensure!(ok, "the dashboard missed its goal");
    Ok(())
}
