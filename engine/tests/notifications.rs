//! Notifications end to end on PostgreSQL, to a real HTTP receiver on
//! loopback (hyper, in the test): it checks every signature, sees the
//! deliveries in log order, is down for a while and gets the backlog once
//! back; a notifier that was stopped resumes where its subscription got
//! to; a replay from a position sends the log again from there, and a
//! redelivery sends one notification again. A receiver holding the wrong
//! secret refuses every delivery, and the refusals are recorded attempts
//! until the notifier gives up. The backoff is shortened to milliseconds.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use slipway_engine::notifier::{self, NewSubscription, NotifierOptions};
use slipway_engine::notify::{self, Backoff};
use slipway_engine::requests::{self, DeployRequest, NewProject};
use slipway_proto::envelope::Metadata;
use slipway_proto::event::{
    deployment_stream, environment_stream, BuildMode, DeliveryOutcome, DeploymentFailed, DeploymentSucceeded, NotificationKind,
    NotificationTarget, ReplicaChange, ReplicaChanged, ReplicasObserved, StepDispatched,
};
use slipway_proto::{Envelope, Event, Step};
use slipway_store::postgres::PgOptions;
use slipway_store::sealing::{Keyring, Sealing, SealingKey};
use slipway_store::{EventStore, ExpectedVersion, PgStore, Position};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use uuid::Uuid;

const PG_URL: &str = "postgres://slipway:slipway@127.0.0.1:5432/slipway";

/// One request the receiver took.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    delivery: Option<String>,
    kind: Option<String>,
    body: serde_json::Value,
    signed: bool,
}

/// A loopback HTTP receiver that checks signatures with `secret` (set once
/// known), answering 200 when the signature is good (or for Slack and
/// Discord paths, which carry none) and 401 otherwise. It can be stopped
/// and started again on the same port.
#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    secret: Arc<Mutex<String>>,
    got: Arc<Mutex<Vec<Received>>>,
    stop: Arc<Mutex<Option<oneshot::Sender<()>>>>,
    /// Open connections (the notifier keeps them alive), cut when it goes down.
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Receiver {
            addr: listener.local_addr().unwrap(),
            secret: Arc::default(),
            got: Arc::default(),
            stop: Arc::default(),
            connections: Arc::default(),
        };
        receiver.serve(listener);
        receiver
    }

    fn serve(&self, listener: TcpListener) {
        let (stop, mut stopped) = oneshot::channel();
        *self.stop.lock().unwrap() = Some(stop);
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = &mut stopped => return,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                let served = this.clone();
                let connection = tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| served.clone().take(request));
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
                this.connections.lock().unwrap().push(connection.abort_handle());
            }
        });
    }

    async fn take(self, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok()).map(String::from);
        let (timestamp, signature) = (header(notify::TIMESTAMP_HEADER), header(notify::SIGNATURE_HEADER));
        let (delivery, kind) = (header(notify::DELIVERY_HEADER), header(notify::KIND_HEADER));
        let path = request.uri().path().to_string();
        let body = request.into_body().collect().await.unwrap().to_bytes();
        let secret = self.secret.lock().unwrap().clone();
        let signed = match (timestamp.and_then(|t| t.parse::<i64>().ok()), signature) {
            (Some(t), Some(s)) => notify::verify(&secret, t, &body, &s) && (chrono::Utc::now().timestamp() - t).abs() < 300,
            _ => false,
        };
        let received = Received { path: path.clone(), delivery, kind, body: serde_json::from_slice(&body).unwrap_or_default(), signed };
        let accept = signed || path != "/hook";
        self.got.lock().unwrap().push(received);
        let status = if accept { 200 } else { 401 };
        Ok(Response::builder().status(status).body(Full::new(Bytes::new())).unwrap())
    }

    /// Stops listening: connections are refused until `restart`.
    fn down(&self) {
        if let Some(stop) = self.stop.lock().unwrap().take() {
            let _ = stop.send(());
        }
        self.connections.lock().unwrap().drain(..).for_each(|c| c.abort());
    }

    async fn restart(&self) {
        let listener = eventually("the receiver's port to be free again", || async { TcpListener::bind(self.addr).await.ok() }).await;
        self.serve(listener);
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The deliveries taken on `path` (the signed ones, for `/hook`).
    fn on(&self, path: &str) -> Vec<Received> {
        self.got.lock().unwrap().iter().filter(|r| r.path == path && (r.signed || path != "/hook")).cloned().collect()
    }

    /// The `text` of each Slack-shaped message received on `path`.
    fn texts(&self, path: &str) -> Vec<String> {
        self.on(path).iter().map(|r| r.body["text"].as_str().unwrap_or_default().to_string()).collect()
    }
}

/// How long anything here may take.
const PATIENCE: Duration = Duration::from_secs(20);

async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    slipway_support::eventually(what, PATIENCE, check).await
}

struct Setup {
    store: Arc<dyn EventStore>,
    schema: String,
    project: String,
}

impl Setup {
    async fn start() -> Setup {
        let url = std::env::var("SLIPWAY_PG_URL").unwrap_or_else(|_| PG_URL.into());
        let schema = format!("t_{}", Uuid::now_v7().simple());
        let options = PgOptions { schema: Some(schema.clone()), max_connections: 8, migrate: true, ..Default::default() };
        let store = PgStore::connect(&url, options)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is not reachable ({e}); run `scripts/services` first"));
        // Values sealed, as a server with --secrets-key.
        let key = SealingKey::from_hex(&SealingKey::generate_hex()).unwrap();
        let store: Arc<dyn EventStore> =
            Arc::new(store.sealed(Sealing { keyring: Some(Arc::new(Keyring::new(key, Vec::new()))), required: true }));
        let project = "shop".to_string();
        let new = NewProject {
            name: project.clone(),
            repository: "/nonexistent".into(),
            default_branch: "main".into(),
            environments: vec!["live".into()],
            mirror_of: None,
        };
        requests::create_project(&*store, "test", new).await.unwrap().unwrap();
        Setup { store, schema, project }
    }

    /// A new receiver, with a Slack-shaped subscription to this project's
    /// `kind` notifications posting to its `/slack`.
    async fn slack_on(&self, kind: NotificationKind) -> Receiver {
        let receiver = Receiver::start().await;
        let hook = NewSubscription {
            project: Some(self.project.clone()),
            kinds: vec![kind],
            target: NotificationTarget::Slack,
            url: receiver.url("/slack"),
        };
        notifier::subscribe(&*self.store, "test", hook).await.unwrap().unwrap();
        receiver
    }

    /// A deployment requested (recorded as `slipway deploy` records it).
    async fn request(&self) -> Uuid {
        let request = DeployRequest {
            project: self.project.clone(),
            environment: "live".into(),
            git_ref: None,
            mode: BuildMode::Cloud,
            no_cache: false,
            run_release: true,
            dry_run: false,
        };
        requests::request_deployment(&*self.store, "cli:ann", request).await.unwrap().unwrap()
    }

    /// A deployment's verdict, as the engine records it: a failure at the
    /// build, once it was dispatched. Returns the verdict's event id.
    async fn finish(&self, deployment: Uuid, succeeded: bool) -> Uuid {
        if succeeded {
            self.record(
                deployment,
                Event::DeploymentSucceeded(DeploymentSucceeded { image_id: "sha256:1".into(), commit: "0123456789abcdef".into() }),
            )
            .await
        } else {
            let dispatched =
                StepDispatched { step: Step::Build, command_id: Uuid::now_v7(), attempt: 1, deadline: None, dispatched_at: None };
            self.record(deployment, Event::StepDispatched(dispatched)).await;
            self.record(deployment, Event::DeploymentFailed(DeploymentFailed { step: Step::Build, reason: "no Dockerfile".into() })).await
        }
    }

    /// Appends `event` to `deployment`'s stream; returns its id.
    async fn record(&self, deployment: Uuid, event: Event) -> Uuid {
        let stream = deployment_stream(deployment);
        let meta = Metadata { correlation_id: deployment, causation_id: None, actor: "engine".into(), trace: None };
        let envelope = Envelope::new(Uuid::now_v7(), chrono::Utc::now(), &stream, &event, meta).unwrap();
        let id = envelope.id;
        self.store.append(&stream, ExpectedVersion::Any, &[envelope], &[]).await.unwrap().unwrap();
        id
    }

    /// The id of the `DeploymentRequested` of `deployment`.
    async fn requested_event(&self, deployment: Uuid) -> Uuid {
        self.store.read_stream(&deployment_stream(deployment), 1).await.unwrap()[0].envelope.id
    }

    fn notifier(&self, give_up_after: Duration) -> (oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let options = NotifierOptions {
            backoff: Backoff { base: Duration::from_millis(50), cap: Duration::from_millis(200), give_up_after },
            timeout: Duration::from_secs(2),
            poll: Duration::from_millis(100),
            lease: Duration::from_secs(3),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(notifier::run(self.store.clone(), options, async move {
            let _ = stopped.await;
        }));
        (stop, task)
    }

    async fn cleanup(self) {
        let url = std::env::var("SLIPWAY_PG_URL").unwrap_or_else(|_| PG_URL.into());
        if let Ok(pool) = sqlx::PgPool::connect(&url).await {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema)).execute(&pool).await;
        }
    }
}

/// The first `n` event ids as delivery ids.
fn first_ids(expected: &[Uuid], n: usize) -> Vec<String> {
    expected[..n].iter().map(Uuid::to_string).collect()
}

/// The delivery ids a receiver took, in the order taken.
fn ids(received: &[Received]) -> Vec<String> {
    received.iter().filter_map(|r| r.delivery.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_gets_signed_notifications_in_order_and_its_backlog_after_an_outage() {
    let s = Setup::start().await;
    let receiver = Receiver::start().await;
    let hook = NewSubscription { project: None, kinds: vec![], target: NotificationTarget::Webhook, url: receiver.url("/hook") };
    let subscribed = notifier::subscribe(&*s.store, "test", hook).await.unwrap().unwrap();
    let secret = subscribed.secret.clone().unwrap();
    assert!(secret.starts_with(notify::SECRET_PREFIX));
    *receiver.secret.lock().unwrap() = secret.clone();
    // A Slack-shaped subscription for this project's failures only.
    let slack = NewSubscription {
        project: Some(s.project.clone()),
        kinds: vec![NotificationKind::DeploymentFailed],
        target: NotificationTarget::Slack,
        url: receiver.url("/slack/T000/B000/XXXX"),
    };
    let slack = notifier::subscribe(&*s.store, "test", slack).await.unwrap().unwrap();
    assert_eq!((slack.secret, slack.url_shown.as_str()), (None, receiver.url("").as_str()));
    let unknown =
        NewSubscription { project: Some("nope".into()), kinds: vec![], target: NotificationTarget::Discord, url: receiver.url("/d") };
    assert!(notifier::subscribe(&*s.store, "test", unknown).await.unwrap().unwrap_err().message().contains("no project `nope`"));
    let (stop, task) = s.notifier(Duration::from_secs(60));

    // Given two deployments, one that succeeds and one that fails,
    let (d1, d2) = (s.request().await, s.request().await);
    let mut expected = vec![s.requested_event(d1).await, s.requested_event(d2).await];
    expected.push(s.finish(d1, true).await);
    expected.push(s.finish(d2, false).await);
    // the webhook gets all four, signed, in log order, and Slack the failure.
    let four = first_ids(&expected, 4);
    eventually("four signed deliveries", || async { (ids(&receiver.on("/hook")) == four).then_some(()) }).await;
    let got = receiver.on("/hook");
    let kinds: Vec<_> = got.iter().filter_map(|r| r.kind.clone()).collect();
    assert_eq!(kinds, ["deployment.started", "deployment.started", "deployment.succeeded", "deployment.failed"]);
    assert_eq!(got[3].body["project"], "shop");
    assert_eq!(got[3].body["deployment"], d2.to_string());
    assert!(got[3].body["summary"].as_str().unwrap().contains("failed at build: no Dockerfile"));
    let slack_got = eventually("the Slack delivery", || async {
        let got = receiver.on("/slack/T000/B000/XXXX");
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert!(slack_got[0].body["text"].as_str().unwrap().starts_with("[deployment.failed] shop live: deployment"), "{:?}", slack_got);

    // When the receiver is down for a while,
    receiver.down();
    let d3 = s.request().await;
    expected.push(s.requested_event(d3).await);
    expected.push(s.finish(d3, true).await);
    let failed = eventually("attempts refused while down", || async {
        let attempts = notifier::deliveries(&*s.store, Some(subscribed.id)).await.unwrap().unwrap();
        let failed: Vec<_> = attempts.into_iter().filter(|a| matches!(a.attempt.outcome, DeliveryOutcome::Retry { .. })).collect();
        (failed.len() >= 3).then_some(failed)
    })
    .await;
    let first = &failed[0].attempt;
    assert_eq!((first.status, first.event.event_id, first.redelivery), (None, expected[4], false));
    assert!(failed.windows(2).all(|w| w[1].attempt.attempt == w[0].attempt.attempt + 1), "attempts count up");
    let reason = first.error.clone().unwrap();
    assert!(!reason.contains("/hook") && !reason.contains(&secret), "{reason}");
    // then once it is back it gets the backlog, in order, after what it had.
    receiver.restart().await;
    let six = first_ids(&expected, 6);
    eventually("the backlog", || async { (ids(&receiver.on("/hook")) == six).then_some(()) }).await;

    // A notifier that was stopped resumes where the subscription got to,
    stop.send(()).unwrap();
    task.await.unwrap();
    let d4 = s.request().await;
    expected.push(s.requested_event(d4).await);
    let (stop, task) = s.notifier(Duration::from_secs(60));
    let seven = first_ids(&expected, 7);
    eventually("the event recorded while the notifier was stopped", || async { (ids(&receiver.on("/hook")) == seven).then_some(()) }).await;
    // a replay from a position sends everything from there again, in order,
    let attempts = notifier::deliveries(&*s.store, Some(subscribed.id)).await.unwrap().unwrap();
    let third = attempts.iter().find(|a| a.attempt.event.event_id == expected[2]).unwrap().clone();
    let mut before = third.attempt.event.position;
    before.seq -= 1;
    notifier::replay(&*s.store, "test", subscribed.id, before).await.unwrap().unwrap();
    let mut replayed = seven.clone();
    replayed.extend(first_ids(&expected, 7)[2..].iter().cloned());
    eventually("the replay", || async { (ids(&receiver.on("/hook")) == replayed).then_some(()) }).await;
    // and a redelivery sends one again.
    let subscription = notifier::redeliver(&*s.store, "test", third.id).await.unwrap().unwrap();
    assert_eq!(subscription, subscribed.id);
    replayed.push(expected[2].to_string());
    eventually("the redelivery", || async { (ids(&receiver.on("/hook")) == replayed).then_some(()) }).await;
    // The attempt is recorded after the POST it describes: wait for it too.
    let attempts = eventually("the redelivery's attempt recorded", || async {
        let attempts = notifier::deliveries(&*s.store, Some(subscribed.id)).await.unwrap().unwrap();
        attempts.iter().any(|a| a.attempt.redelivery && a.attempt.outcome == DeliveryOutcome::Delivered).then_some(attempts)
    })
    .await;
    assert!(attempts.iter().filter(|a| a.attempt.outcome == DeliveryOutcome::Delivered).all(|a| a.attempt.status == Some(200)));

    // Neither the secret nor the URL's path is anywhere in the log.
    let log = s.store.read_all(Position::START, 100_000).await.unwrap();
    for recorded in &log {
        let body = recorded.envelope.to_json();
        assert!(!body.contains(&secret) && !body.contains("/hook") && !body.contains("XXXX"), "{body}");
    }
    // Once removed, a subscription gets nothing more.
    notifier::unsubscribe(&*s.store, "test", subscribed.id).await.unwrap().unwrap();
    assert!(notifier::unsubscribe(&*s.store, "test", subscribed.id).await.unwrap().is_err());
    stop.send(()).unwrap();
    task.await.unwrap();
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_with_the_wrong_secret_refuses_and_the_refusals_are_recorded_until_the_notifier_gives_up() {
    let s = Setup::start().await;
    let receiver = Receiver::start().await;
    *receiver.secret.lock().unwrap() = "slwn_not_the_secret".into();
    let hook = NewSubscription {
        project: Some(s.project.clone()),
        kinds: vec![NotificationKind::DeploymentStarted],
        target: NotificationTarget::Webhook,
        url: receiver.url("/hook"),
    };
    let subscribed = notifier::subscribe(&*s.store, "test", hook).await.unwrap().unwrap();
    let (stop, task) = s.notifier(Duration::from_millis(600));
    let d = s.request().await;
    let event = s.requested_event(d).await;
    let attempts = eventually("the notifier to give up", || async {
        let attempts = notifier::deliveries(&*s.store, Some(subscribed.id)).await.unwrap().unwrap();
        attempts.iter().any(|a| a.attempt.outcome == DeliveryOutcome::GaveUp).then_some(attempts)
    })
    .await;
    assert!(attempts.len() >= 3, "{attempts:?}");
    assert!(attempts.iter().all(|a| a.attempt.status == Some(401) && a.attempt.event.event_id == event), "{attempts:?}");
    assert!(attempts.iter().all(|a| a.attempt.error.as_deref() == Some("the target answered 401")));
    assert!(receiver.on("/hook").is_empty(), "nothing was accepted");
    assert!(receiver.got.lock().unwrap().len() >= 3, "but it was tried");
    // A later event is tried after the one given up on.
    let d2 = s.request().await;
    let later = s.requested_event(d2).await;
    eventually("the next event to be tried", || async {
        let attempts = notifier::deliveries(&*s.store, Some(subscribed.id)).await.unwrap().unwrap();
        attempts.iter().any(|a| a.attempt.event.event_id == later).then_some(())
    })
    .await;
    stop.send(()).unwrap();
    task.await.unwrap();
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_that_ended_before_its_first_step_is_not_said_to_have_failed_at_one() {
    let s = Setup::start().await;
    let receiver = s.slack_on(NotificationKind::DeploymentFailed).await;
    let (stop, task) = s.notifier(Duration::from_secs(60));
    // Rejected while it waited for approval: the engine fails it at the
    // step it would have run first, though none ran.
    let rejected = s.request().await;
    let failed = DeploymentFailed { step: Step::CheckServices, reason: "rejected by token:bob".into() };
    s.record(rejected, Event::DeploymentFailed(failed)).await;
    let ran = s.request().await;
    s.finish(ran, false).await;
    let texts = eventually("both failures", || async {
        let texts = receiver.texts("/slack");
        (texts.len() == 2).then_some(texts)
    })
    .await;
    assert!(texts[0].ends_with(&format!("deployment {rejected} failed before it started: rejected by token:bob")), "{texts:?}");
    assert!(texts[1].ends_with(&format!("deployment {ran} failed at build: no Dockerfile")), "{texts:?}");
    stop.send(()).unwrap();
    task.await.unwrap();
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_release_whose_replicas_crash_loop_is_notified_when_a_record_says_the_loop() {
    let s = Setup::start().await;
    let receiver = s.slack_on(NotificationKind::ReleaseCrashLooping).await;
    let (stop, task) = s.notifier(Duration::from_secs(60));
    let serving = s.request().await;
    s.finish(serving, true).await;
    // The swarm watcher's records on the environment's stream: a failure, a
    // loop carried but not told (a later record of a loop), and the record
    // that tells of one; then a second watcher's word of the same loop
    // (not news), and its word of another service's loop (news).
    let stream = environment_stream(&s.project, "live");
    let (web, worker) = ("slipway-shop-live-web", "slipway-shop-live-worker");
    let records = [
        ("swarm-watch:a", web, 0, false),
        ("swarm-watch:a", web, 4, false),
        ("swarm-watch:a", web, 3, true),
        ("swarm-watch:b", web, 3, true),
        ("swarm-watch:b", worker, 3, true),
    ];
    for (actor, service, crash_loop, crash_loop_said) in records {
        let observed = ReplicasObserved {
            deployment_id: serving,
            service: service.into(),
            changes: vec![ReplicaChanged {
                slot: 1,
                change: ReplicaChange::Failed,
                node: "10.0.0.2".into(),
                from: String::new(),
                error: "task: non-zero exit (3)".into(),
            }],
            running: 2,
            wanted: 3,
            role: "web".into(),
            crash_loop,
            crash_loop_said,
            ..Default::default()
        };
        let meta = Metadata { correlation_id: serving, causation_id: None, actor: actor.into(), trace: None };
        let envelope = Envelope::new(Uuid::now_v7(), chrono::Utc::now(), &stream, &Event::ReplicasObserved(observed), meta).unwrap();
        s.store.append(&stream, ExpectedVersion::Any, &[envelope], &[]).await.unwrap().unwrap();
    }
    let texts = eventually("the crash-loop notifications", || async {
        let texts = receiver.texts("/slack");
        texts.iter().any(|t| t.contains(worker)).then_some(texts)
    })
    .await;
    assert!(
        texts[0].ends_with(&format!(
            "deployment {serving} is crash-looping: 3 replica failures of slipway-shop-live-web within a minute, 2 of 3 replicas running, \
             last: task: non-zero exit (3)"
        )),
        "{texts:?}"
    );
    // Notifications go out in the log's order, so the first one being the
    // told loop's shows the two records before it sent nothing, and the
    // worker's being the second shows the second watcher's word of the
    // web's loop sent nothing either.
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(texts[1].contains("3 replica failures of slipway-shop-live-worker"), "{texts:?}");
    stop.send(()).unwrap();
    task.await.unwrap();
    s.cleanup().await;
}

/// The holders of a subscription's leases, in the order taken.
async fn lease_holders(s: &Setup, subscription: Uuid) -> Vec<String> {
    let stream = slipway_proto::event::notification_stream(subscription);
    let mut holders: Vec<String> = Vec::new();
    for r in s.store.read_stream(&stream, 1).await.unwrap() {
        if let Ok(Event::NotificationLeaseTaken(l)) = r.envelope.decode::<Event>() {
            if holders.last() != Some(&l.holder) {
                holders.push(l.holder);
            }
        }
    }
    holders
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_send_each_notification_once_and_one_that_dies_or_stops_hands_over() {
    let s = Setup::start().await;
    let receiver = Receiver::start().await;
    let hook = NewSubscription { project: None, kinds: vec![], target: NotificationTarget::Webhook, url: receiver.url("/hook") };
    let subscribed = notifier::subscribe(&*s.store, "test", hook).await.unwrap().unwrap();
    *receiver.secret.lock().unwrap() = subscribed.secret.clone().unwrap();
    // Two engines' notifiers on one log, started together.
    let (_stop_a, a) = s.notifier(Duration::from_secs(60));
    let (stop_b, b) = s.notifier(Duration::from_secs(60));
    let mut expected = Vec::new();
    for _ in 0..10 {
        let d = s.request().await;
        expected.push(s.requested_event(d).await);
    }
    let all = first_ids(&expected, 10);
    eventually("ten deliveries", || async { (ids(&receiver.on("/hook")).len() >= 10).then_some(()) }).await;
    // Each notification went out once, in order, though both read all ten.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ids(&receiver.on("/hook")), all, "each notification once, in log order");
    assert_eq!(lease_holders(&s, subscribed.id).await.len(), 1, "one notifier sent them all");

    // One dies without handing its lease back: the other sends the next
    // ones (at once, or once the dead one's lease ran out), still once each.
    a.abort();
    let _ = a.await;
    for _ in 0..3 {
        let d = s.request().await;
        expected.push(s.requested_event(d).await);
    }
    let thirteen = first_ids(&expected, 13);
    eventually("the next three after a notifier died", || async { (ids(&receiver.on("/hook")).len() >= 13).then_some(()) }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(ids(&receiver.on("/hook")), thirteen);

    // One that stops hands its lease back: the next notifier sends well
    // before the lease (3 s) would have run out.
    stop_b.send(()).unwrap();
    b.await.unwrap();
    let (stop_c, c) = s.notifier(Duration::from_secs(60));
    let d = s.request().await;
    expected.push(s.requested_event(d).await);
    let asked = std::time::Instant::now();
    let fourteen = first_ids(&expected, 14);
    eventually("the next one after a notifier stopped", || async { (ids(&receiver.on("/hook")) == fourteen).then_some(()) }).await;
    assert!(asked.elapsed() < Duration::from_secs(2), "sent {:?} after it was recorded", asked.elapsed());
    let holders = lease_holders(&s, subscribed.id).await;
    assert!(holders.len() >= 2 && holders.windows(2).all(|w| w[0] != w[1]), "{holders:?}");
    // Every attempt was recorded once: no notification has two.
    let attempts = notifier::deliveries(&*s.store, Some(subscribed.id)).await.unwrap().unwrap();
    let mut delivered: Vec<Uuid> = attempts.iter().map(|a| a.attempt.event.event_id).collect();
    delivered.sort();
    delivered.dedup();
    assert_eq!((attempts.len(), delivered.len()), (14, 14));
    stop_c.send(()).unwrap();
    c.await.unwrap();
    s.cleanup().await;
}
