//! The swarm runtime on three simulated hosts (`slipway_tests::swarm`):
//! `replicas = 3` spreads over the three nodes, a load client through the
//! router sees every replica and no failed request through a deploy of a
//! new version, `slipway hosts` lists the nodes and what runs there, and a
//! placement no node can satisfy fails the deployment before traffic moves,
//! with Swarm's reason; a host lost under load fails no request, Swarm
//! places its replica again, the route follows and the environment's
//! history tells it; `hosts drain` moves a node's replicas off it with no
//! failed request. One host runs under the README's firewall rule
//! (published ports answer the routers only) from the first deploy on.
//! Last, an operator pins the serving release by hand to a node label no
//! node has: the watcher records that its replicas cannot be placed, with
//! Swarm's reason, and `slipway status` says so; once a node has the label
//! they are placed again, recorded, and the route follows; a drain of that
//! only node is then refused by `slipway hosts drain`. Then its command
//! is replaced by hand with one that exits at once: the crash loop is
//! recorded, told once, and shown by `status`.
//!
//! `#[ignore]`d and run by the serial phase of `scripts/test`: it needs
//! root (namespaces, dockerds of its own) and fails, never skips, without
//! it. The main Docker daemon is never touched: the swarm's manager is a
//! namespace's dockerd, and the workers talk to it through DOCKER_HOST.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use slipway_engine::Status;
use slipway_proto::event::{ReplicaChange, ReplicasObserved};
use slipway_proto::Event;
use slipway_tests::swarm::SimulatedSwarm;
use slipway_tests::*;

/// A busybox app answering `<version> <container hostname>`, so the load
/// client can tell the replicas apart.
fn app(version: &str, slipway_toml: &str) -> BTreeMap<String, Vec<u8>> {
    let mut files = busybox_app(version, slipway_toml, "");
    let dockerfile = "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCOPY www /www\n\
        CMD [\"sh\", \"-c\", \"echo $(cat /www/index.html) $(hostname) > /www/index.html; exec httpd -f -p 80 -h /www\"]\n";
    files.insert("Dockerfile".into(), dockerfile.as_bytes().to_vec());
    files
}

const WEB: &str = "[web]\nport = 80\nreplicas = 3\nhealth_timeout = \"60s\"\n";

fn web_started(events: &[Event]) -> slipway_proto::event::WebContainerStarted {
    events
        .iter()
        .find_map(|e| match e {
            Event::WebContainerStarted(w) => Some(w.clone()),
            _ => None,
        })
        .expect("a WebContainerStarted")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: network namespaces and dockerds of its own; run by scripts/test's serial phase"]
async fn replicas_spread_over_the_hosts_and_a_redeploy_or_rollback_fails_no_request() {
    let mut swarm = SimulatedSwarm::start(3);
    // The workers' engine is the swarm's manager (never the main daemon).
    std::env::set_var("DOCKER_HOST", format!("unix://{}", swarm.manager().socket));
    let harness = Harness::start_swarm(&swarm.registry).await;
    let repo = AppRepo::new();
    repo.commit(&app("v1", WEB), "v1");
    harness.create_project(&repo.path()).await;

    let first = harness.deploy("live", "main").await;
    assert_eq!(first.status, Status::Succeeded, "{first:?}");
    let started = web_started(&harness.events(first.id).await);
    // One upstream per replica, one replica per node.
    assert_eq!(started.upstreams.len(), 3, "{started:?}");
    let addresses: BTreeSet<&str> = started.upstreams.iter().map(|u| u.rsplit_once(':').unwrap().0).collect();
    let nodes: BTreeSet<&str> = swarm.nodes.iter().map(|n| n.address.as_str()).collect();
    assert_eq!(addresses, nodes, "replicas spread over every node");
    // `status` says where each replica answers: the route's upstreams.
    let status = slipway_engine::queries::status(&*harness.store, &harness.project, "live").await.unwrap().unwrap();
    let active = status.active.expect("a serving release");
    assert_eq!(active.upstreams, started.upstreams, "{active:?}");

    // `slipway hosts`: the three nodes, ready, each running one replica.
    let hosts = slipway_workers::steps::swarm::hosts().await.unwrap();
    assert_eq!(hosts.len(), 3);
    for h in &hosts {
        assert_eq!((h.state.as_str(), h.availability.as_str()), ("ready", "active"), "{h:?}");
        assert_eq!(h.tasks.iter().filter(|t| t.starts_with(&started.container)).count(), 1, "{h:?}");
    }

    // The README's firewall rule on one host: its replica's published port
    // answers the routers' address only, not another host, and the router
    // still reaches it (the load below goes through every replica).
    let guarded = &swarm.nodes[1];
    let published = started.upstreams.iter().find(|u| u.starts_with(&format!("{}:", guarded.address))).unwrap().clone();
    assert!(swarm.nodes[2].can_connect(&published), "before the rule, another host reaches {published}");
    guarded.firewall_published_ports(&format!("{}/32", swarm.root_address()));
    assert!(!swarm.nodes[2].can_connect(&published), "the rule lets another host reach {published}");
    let from_router = std::net::TcpStream::connect_timeout(&published.parse().unwrap(), Duration::from_secs(2));
    assert!(from_router.is_ok(), "the rule keeps the routers from {published}: {from_router:?}");

    // Load through the router while v2 replaces v1.
    let load = load::Load::start(harness.router_addr(), &harness.host("live"), 4, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(2)).await;
    repo.commit(&app("v2", WEB), "v2");
    let second = harness.deploy("live", "main").await;
    assert_eq!(second.status, Status::Succeeded, "{second:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let samples: Vec<load::Sample> = load.stop().await.into_iter().flatten().collect();
    let failed: Vec<&String> = samples.iter().filter_map(|s| s.outcome.as_ref().err()).collect();
    assert!(failed.is_empty(), "{} of {} requests failed: {:?}", failed.len(), samples.len(), &failed[..failed.len().min(5)]);
    let seen: BTreeSet<&str> = samples.iter().filter_map(|s| s.outcome.as_ref().ok()).map(String::as_str).collect();
    let replicas = |version: &str| seen.iter().filter(|b| b.starts_with(&format!("{version} "))).count();
    assert_eq!((replicas("v1"), replicas("v2")), (3, 3), "the router balanced over every replica: {seen:?}");

    // A placement no node satisfies: the deploy step fails with Swarm's
    // reason, before the health check, and v2 keeps serving.
    repo.commit(&app("v3", "[web]\nport = 80\nreplicas = 2\nhosts = [\"node.labels.region==eu\"]\n"), "v3");
    let third = harness.deploy("live", "main").await;
    let (step, reason) = failure(&third);
    assert_eq!(step, slipway_proto::Step::Deploy, "{reason}");
    assert!(reason.contains("no node can run") && reason.contains("no suitable node"), "{reason}");
    assert!(reason.contains("node.labels.region==eu"), "{reason}");
    let (status, body) = harness.routed_page("live").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with("v2 "), "{body}");
    // The service Swarm could not place is gone, as are v1's.
    eventually("only v2's service left", Duration::from_secs(30), || async {
        let services = swarm.manager().docker(&["service", "ls", "--format", "{{.Name}}"]);
        (services.lines().count() == 1).then_some(())
    })
    .await;

    // A host lost under load (a worker: the manager keeps the swarm's
    // quorum). Its replica is ejected by the router, Swarm places it
    // again, the route follows, and no GET fails.
    let serving = web_started(&harness.events(second.id).await);
    let lost = swarm.nodes[2].address.clone();
    let on = |address: &str| format!("{address}:");
    assert_eq!(serving.upstreams.iter().filter(|u| u.starts_with(&on(&lost))).count(), 1, "{serving:?}");
    let load = load::Load::start(harness.router_addr(), &harness.host("live"), 4, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(1)).await;
    swarm.nodes[2].lose();
    let upstreams = followed(&harness, 3, &lost).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let samples: Vec<load::Sample> = load.stop().await.into_iter().flatten().collect();
    let failed: Vec<&String> = samples.iter().filter_map(|s| s.outcome.as_ref().err()).collect();
    eprintln!("a host lost: {} of {} requests failed; the route is {upstreams:?}", failed.len(), samples.len());
    assert!(failed.is_empty(), "{} of {} requests failed: {:?}", failed.len(), samples.len(), &failed[..failed.len().min(5)]);
    // The history tells it: the node down, the replica placed again
    // elsewhere, the route following it, acknowledged by the router.
    let story = eventually("the history of the lost host", Duration::from_secs(30), || async {
        let events = environment_events(&harness).await;
        let changes: Vec<(ReplicaChange, String, String)> = events
            .iter()
            .filter_map(|e| match e {
                Event::ReplicasObserved(r) if r.service == serving.container => Some(r.changes.clone()),
                _ => None,
            })
            .flatten()
            .map(|c| (c.change, c.node, c.from))
            .collect();
        let down = changes.iter().any(|(c, node, _)| *c == ReplicaChange::NodeDown && *node == lost);
        let moved = changes.iter().any(|(c, node, from)| *c == ReplicaChange::Rescheduled && *from == lost && *node != lost);
        (down && moved).then_some(events)
    })
    .await;
    let observed = story.iter().filter(|e| matches!(e, Event::ReleaseUpstreamsObserved(o) if o.deployment_id == second.id)).count();
    let settled = story.iter().filter(|e| matches!(e, Event::RerouteSettled(s) if s.missing.is_empty())).count();
    assert!(observed >= 1 && settled >= 1, "the route followed through acknowledged reroutes: {story:?}");
    let routed = story.iter().rev().find_map(|e| match e {
        Event::ReleaseRerouted(r) => Some(r.upstreams.clone()),
        _ => None,
    });
    assert_eq!(routed.as_ref(), Some(&upstreams), "{story:?}");

    // `hosts drain` moves the replicas off a node with no failed request,
    // recorded with who asked; `activate` lets Swarm use it again.
    let drained = swarm.nodes[1].address.clone();
    // The other two nodes can take its replicas (no placement): not refused.
    let stranded = slipway_workers::steps::swarm::stranded_by_drain(&drained).await.unwrap();
    assert!(stranded.is_empty(), "{stranded:?}");
    let load = load::Load::start(harness.router_addr(), &harness.host("live"), 4, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let change = slipway_node::drain::drain(&harness.store, &drained, "cli:tester", Duration::from_secs(120)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let samples: Vec<load::Sample> = load.stop().await.into_iter().flatten().collect();
    let failed: Vec<&String> = samples.iter().filter_map(|s| s.outcome.as_ref().err()).collect();
    eprintln!("a drain: {} of {} requests failed; moved {:?}", failed.len(), samples.len(), change.moved);
    assert!(failed.is_empty(), "{} of {} requests failed: {:?}", failed.len(), samples.len(), &failed[..failed.len().min(5)]);
    assert_eq!((change.availability.as_str(), change.previous.as_str()), ("drain", "active"), "{change:?}");
    assert!(!change.moved.is_empty(), "{change:?}");
    let upstreams = followed(&harness, 3, &drained).await;
    assert!(upstreams.iter().all(|u| u.starts_with(&on(&swarm.manager().address))), "{upstreams:?}");
    let hosts = slipway_workers::steps::swarm::hosts().await.unwrap();
    let row = hosts.iter().find(|h| h.address == drained).unwrap();
    assert_eq!(row.availability, "drain", "{row:?}");
    assert!(row.tasks.iter().all(|t| !t.starts_with("slipway-")), "{row:?}");
    slipway_node::drain::activate(&harness.store, &drained, "cli:tester").await.unwrap();
    let recorded = harness.store.read_stream(slipway_proto::event::INSTALLATION_STREAM, 1).await.unwrap();
    let drains: Vec<(String, String)> = recorded
        .iter()
        .filter_map(|r| match r.envelope.decode() {
            Ok(Event::HostAvailabilityChanged(h)) => Some((h.availability, r.envelope.actor.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(drains, vec![("drain".into(), "cli:tester".into()), ("active".into(), "cli:tester".into())]);

    // A rollback under load: v1's recorded image on three replicas again
    // (over the two nodes left), the router balancing over all three, and
    // no request failing.
    let load = load::Load::start(harness.router_addr(), &harness.host("live"), 4, Duration::from_millis(20));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (back, _) = harness.rollback("live", None).await;
    assert_eq!(back.status, Status::Succeeded, "{back:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let samples: Vec<load::Sample> = load.stop().await.into_iter().flatten().collect();
    let failed: Vec<&String> = samples.iter().filter_map(|s| s.outcome.as_ref().err()).collect();
    eprintln!("a rollback: {} of {} requests failed", failed.len(), samples.len());
    assert!(failed.is_empty(), "{} of {} requests failed: {:?}", failed.len(), samples.len(), &failed[..failed.len().min(5)]);
    let seen: BTreeSet<&str> = samples.iter().filter_map(|s| s.outcome.as_ref().ok()).map(String::as_str).collect();
    assert_eq!(seen.iter().filter(|b| b.starts_with("v1 ")).count(), 3, "the router balanced over v1's replicas: {seen:?}");
    assert_eq!(web_started(&harness.events(back.id).await).upstreams.len(), 3);
    let (status, body) = harness.routed_page("live").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with("v1 "), "{body}");

    // Replicas no node can take: the serving release's service pinned by
    // hand to a label no node has. Swarm stops its replicas and leaves
    // their replacements pending; the watcher records it with Swarm's
    // reason, and status says the release is down, not running.
    let service = web_started(&harness.events(back.id).await).container;
    let pinned_at = std::time::Instant::now();
    let pin = ["--update-parallelism", "0", "--constraint-add", "node.labels.pinned==yes"];
    swarm.manager().docker(&[&["service", "update", "--detach"][..], &pin, &[service.as_str()]].concat());
    let (stranded, _) = eventually("the replicas no node can take recorded", Duration::from_secs(60), || async {
        let records = replica_records(&harness, &service).await;
        let slots = slots_with(&records, ReplicaChange::Unplaceable);
        let last = records.last()?.clone();
        (slots.len() == 3 && last.unplaced == 3).then_some((last, records))
    })
    .await;
    assert_eq!((stranded.running, stranded.wanted, stranded.role.as_str()), (0, 3, "web"), "{stranded:?}");
    assert!(stranded.reason.starts_with("no suitable node ("), "Swarm's reason: {stranded:?}");
    let reason = stranded.reason.clone();
    eprintln!("pinned to no node: recorded after {:?}: {reason}", pinned_at.elapsed());
    let status = slipway_engine::queries::status(&*harness.store, &harness.project, "live").await.unwrap().unwrap();
    let active = status.active.expect("a serving release");
    assert_eq!(active.live.as_ref().map(|l| l.state.as_str()), Some("down"), "{active:?}");
    let web = active.replicas.iter().find(|r| r.service == service).expect("the web service's replicas");
    assert_eq!((web.running, web.wanted, web.unplaced, web.reason.as_str()), (0, 3, 3, reason.as_str()), "{web:?}");
    // The CLI says it in words: status, --json, and the environment's history.
    let said = format!("3 of 3 web replicas cannot be placed: {reason}");
    let out = slipway(&harness, &["status", &harness.project, "live"]).success();
    assert!(out.contains("\n  live   down, ") && out.contains(&format!("\n  pending {said}\n")), "{out}");
    let json: serde_json::Value =
        serde_json::from_str(&slipway(&harness, &["--json", "status", &harness.project, "live"]).success()).unwrap();
    assert_eq!(json["active"]["replicas"][0]["unplaced"], 3, "{json}");
    assert_eq!(json["active"]["live"]["state"], "down", "{json}");
    let stream = slipway_proto::event::environment_stream(&harness.project, "live");
    let history = slipway(&harness, &["events", &stream]).success();
    assert!(history.lines().any(|l| l.contains("ReplicasObserved") && l.contains(&format!("{service}: {said}"))), "{history}");

    // A node gets the label: Swarm places the replicas there, the watcher
    // records it, the route follows and the release answers again.
    swarm.label(0, "pinned=yes");
    let placed = eventually("the replicas placed again recorded", Duration::from_secs(60), || async {
        let records = replica_records(&harness, &service).await;
        let last = records.last()?.clone();
        (slots_with(&records, ReplicaChange::Placed).len() == 3 && last.unplaced == 0 && last.running == 3).then_some(last)
    })
    .await;
    assert!(placed.changes.iter().all(|c| c.change != ReplicaChange::Placed || c.node == swarm.manager().address), "{placed:?}");
    let upstreams = followed(&harness, 3, &swarm.nodes[1].address).await;
    assert!(upstreams.iter().all(|u| u.starts_with(&on(&swarm.manager().address))), "{upstreams:?}");
    let (status, body) = harness.routed_page("live").await.unwrap();
    assert_eq!(status, 200);
    assert!(body.starts_with("v1 "), "{body}");
    let out = slipway(&harness, &["status", &harness.project, "live"]).success();
    assert!(out.contains("\n  live   running, ") && !out.contains("pending"), "{out}");

    // Only the manager satisfies the placement now: draining it is refused (a conflict, exit 4),
    // naming the service, and nothing changes.
    let manager = swarm.manager().address.clone();
    let refused = slipway(&harness, &["hosts", "drain", &manager]);
    assert_eq!(refused.code, 4, "{refused:?}");
    assert!(
        refused
            .err
            .contains(&format!("draining {manager} would leave {service} (placement [\"node.labels.pinned==yes\"]) with nowhere to run")),
        "{refused:?}"
    );
    // A name that is no node is not found (exit 3), for a drain and an activation alike.
    for verb in ["drain", "activate"] {
        let unknown = slipway(&harness, &["hosts", verb, "no-such-node"]);
        assert_eq!(unknown.code, 3, "{unknown:?}");
        assert!(unknown.err.contains("no swarm node is named \"no-such-node\""), "{unknown:?}");
    }
    let hosts = slipway_workers::steps::swarm::hosts().await.unwrap();
    assert_eq!(hosts.iter().find(|h| h.address == manager).map(|h| h.availability.as_str()), Some("active"), "{hosts:?}");
    let recorded = harness.store.read_stream(slipway_proto::event::INSTALLATION_STREAM, 1).await.unwrap();
    let changes = recorded.iter().filter(|r| matches!(r.envelope.decode(), Ok(Event::HostAvailabilityChanged(_)))).count();
    assert_eq!(changes, 2, "the refused drain and the unknown names recorded nothing");
    eprintln!("stranded, placed again and a drain refused in {:?}: {}", pinned_at.elapsed(), refused.err.trim());

    // A crash loop: the serving service's command replaced by hand with one
    // that exits at once. Swarm starts each replica again a second later,
    // as a new task; the watcher records the loop (told once), and status
    // says it. (Its end is recorded once a minute passes with fewer than 3
    // failures: the unit tests cover that.)
    let broken_at = std::time::Instant::now();
    swarm.manager().docker(&["service", "update", "--detach", "--update-parallelism", "0", "--args", "false", &service]);
    let looping = eventually("the crash loop recorded", Duration::from_secs(90), || async {
        replica_records(&harness, &service).await.into_iter().find(|r| r.crash_loop_said)
    })
    .await;
    assert!(looping.crash_loop >= 3, "{looping:?}");
    assert!(looping.changes.iter().any(|c| c.change == ReplicaChange::Failed), "{looping:?}");
    eprintln!("a crash loop recorded after {:?}: {} failures", broken_at.elapsed(), looping.crash_loop);
    let out = eventually("status says the loop", Duration::from_secs(30), || async {
        let out = slipway(&harness, &["status", &harness.project, "live"]).success();
        (out.contains("\n  live   crash-looping, ") && out.contains("\n  loop   web replicas crash-looping: ")).then_some(out)
    })
    .await;
    assert!(out.contains(" failures within a minute, "), "{out}");
    let history = slipway(&harness, &["events", &stream]).success();
    assert!(history.lines().any(|l| l.contains("ReplicasObserved") && l.contains("crash-looping: ")), "{history}");
    swarm.manager().docker(&["service", "rollback", "--detach", &service]);

    harness.shutdown().await;
    drop(swarm);
}

/// The environment's stream, decoded.
async fn environment_events(harness: &Harness) -> Vec<Event> {
    let stream = slipway_proto::event::environment_stream(&harness.project, "live");
    let recorded = harness.store.read_stream(&stream, 1).await.unwrap();
    recorded.iter().map(|r| r.envelope.decode().unwrap()).collect()
}

/// The swarm watcher's records of `service`, oldest first.
async fn replica_records(harness: &Harness, service: &str) -> Vec<ReplicasObserved> {
    let events = environment_events(harness).await;
    events
        .into_iter()
        .filter_map(|e| match e {
            Event::ReplicasObserved(r) if r.service == service => Some(r),
            _ => None,
        })
        .collect()
}

/// The slots `records` say had `change`.
fn slots_with(records: &[ReplicasObserved], change: ReplicaChange) -> BTreeSet<u64> {
    records.iter().flat_map(|r| &r.changes).filter(|c| c.change == change).map(|c| c.slot).collect()
}

/// What a `slipway` command did.
#[derive(Debug)]
struct Ran {
    code: i32,
    out: String,
    err: String,
}

impl Ran {
    #[track_caller]
    fn success(self) -> String {
        assert_eq!(self.code, 0, "{self:?}");
        self.out
    }
}

/// Runs the `slipway` CLI built beside this test (`cargo build -p
/// slipway`; `scripts/test` builds it with the workspace) on the harness's
/// store, its engine the swarm's manager (DOCKER_HOST, inherited).
fn slipway(harness: &Harness, args: &[&str]) -> Ran {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(|deps| deps.parent()).map(|dir| dir.join("slipway")).unwrap();
    assert!(bin.exists(), "{} is missing: build it first (cargo build -p slipway)", bin.display());
    let data = harness.data.path();
    let cli = data.join("cli");
    let out = std::process::Command::new(&bin)
        .args(args)
        .env("SLIPWAY_DATABASE", format!("sqlite://{}", data.join("slipway.db").display()))
        .env("SLIPWAY_DATA_DIR", &cli)
        .env_remove("SLIPWAY_SERVER")
        .env_remove("SLIPWAY_TOKEN")
        .output()
        .unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Waits until the serving release runs `replicas` replicas none of which
/// is on `gone`, and its route (acknowledged by the router) says so.
async fn followed(harness: &Harness, replicas: usize, gone: &str) -> Vec<String> {
    eventually("the route to follow the replicas", Duration::from_secs(120), || async {
        let env = slipway_engine::load::environment(&*harness.store, &harness.project, "live").await.unwrap();
        let active = env.active.as_ref()?;
        let off = active.upstreams.iter().all(|u| !u.starts_with(&format!("{gone}:")));
        let route = slipway_engine::load::routes(&*harness.store).await.unwrap();
        let routed = route.by_environment.get(&(harness.project.clone(), "live".to_string()))?;
        (active.upstreams.len() == replicas && off && env.rerouting.is_none() && routed.upstreams == active.upstreams)
            .then(|| active.upstreams.clone())
    })
    .await
}
