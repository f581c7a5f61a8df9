//! Notifications, recorded and sent: subscriptions (`subscribe`,
//! `unsubscribe`), the lists (`subscriptions`, `deliveries`), the requests
//! to send again (`redeliver`, `replay`), and the notifier task (`run`)
//! that the engine runs beside the driver. The decisions are `notify`'s
//! (pure); this module reads the log, posts, and records.
//!
//! The notifier is its own catch-up reader of the log, apart from the
//! driver: it reads with `read_all` from where its subscriptions got to,
//! and nothing on a deployment's path waits for it (it writes only to the
//! `notification-<id>` streams, which no deployment appends to).
//!
//! Each attempt is an event (`NotificationAttempted` on the subscription's
//! stream) rather than a row in an operational table, for three reasons:
//! where each subscription got to is then folded from its stream, so a
//! restarted or replaced notifier resumes exactly there with no second
//! source of truth (the `notifier` checkpoint only spares re-reading a
//! long log when there is nothing to send); attempts are hash-chained and
//! exported with the rest of the log, which is what an auditor asks of
//! "was the on-call told"; and both backends need no new table. The cost is
//! bounded: a delivery makes at most about 20 attempts in its 72 hours
//! (the backoff doubles up to an hour).
//!
//! Order and at-least-once: a subscription's notifications are sent in log
//! order, one at a time; while the oldest is retried the later ones wait
//! behind it, and a receiver that was down gets the backlog in order once
//! it answers. Attempts are recorded after they were made, every
//! subscription's of one pass (at most `PASS_POSTS` posts each) in one
//! transaction, so a crash in between sends them again (each carries its
//! event's id in `X-Slipway-Delivery` for the receiver to drop a repeat).
//!
//! Two engines, one post: only the notifier holding a subscription's lease
//! (`NotificationLeaseTaken` on its stream, taken at the version it read, so
//! two cannot both take it) posts for it, and only while the post's timeout
//! fits inside the lease, so its attempt is recorded before any other
//! notifier can take the lease. A lease is taken for
//! `lease_length` when there is something to send; a stopping notifier
//! finishes the pass under way (its posts answered and recorded) and hands
//! its leases back, and one that died has them run out, after which
//! the other engine takes over from where the stream says it got to.
//!
//! Secrets: the target URL (a Slack or Discord webhook's path is its
//! credential) and the signing secret go to the value table, sealed like
//! settings; events hold fingerprints and the URL's scheme and host. The
//! secret is returned once, by `subscribe`. Failure reasons are written by
//! this module and scrubbed of both before they are recorded.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::RngCore;
use slipway_proto::event::{
    deployment_stream, notification_stream, DeliveryOutcome, LogPosition, NotificationAttempted, NotificationKind, NotificationLeaseTaken,
    NotificationRedeliveryRequested, NotificationReplayRequested, NotificationSubscribed, NotificationTarget, NotificationUnsubscribed,
    NotifiedEvent, NOTIFICATIONS_STREAM,
};
use slipway_proto::{Envelope, Event, StreamId};
use slipway_store::settings::fingerprint;
use slipway_store::subscription::wait_for_wakeup;
use slipway_store::{EventStore, ExpectedVersion, Position, RecordedEvent, StoreError, StreamAppend};
use uuid::Uuid;

use crate::notify::{self, Backoff, DeploymentContext, LeaseNeed, Next, Notice, Progress, Subscription, Subscriptions};
use crate::requests::{envelope, load_project, Rejection};

/// The actor of what the notifier records.
const ACTOR: &str = "engine:notifier";
/// The checkpoint of the notifier's reader.
const CHECKPOINT: &str = "notifier";
/// Events read at a time.
const BATCH: usize = 500;
/// The longest failure reason recorded.
const MAX_REASON: usize = 300;
/// Deployments whose request is kept in memory (then forgotten, and read again when needed).
const CONTEXTS: usize = 10_000;
/// How long a subscription's lease is taken for, by default.
const LEASE: Duration = Duration::from_secs(30);
/// Posts to one subscription per pass, before the pass's attempts are recorded.
const PASS_POSTS: usize = 64;
/// How long a stopping notifier spends handing its leases back.
const RELEASE_WITHIN: Duration = Duration::from_secs(2);

/// How long a lease is taken for: long enough for a few posts, so a busy
/// subscription renews it every so often rather than on every post.
fn lease_length(options: &NotifierOptions) -> Duration {
    options.lease.max(options.timeout * 3)
}

/// This notifier process's name as a lease holder:
/// `notifier:<host>:<process id>:<instance>`, unique even for two engines
/// in one process.
fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let instance = Uuid::now_v7().simple().to_string();
    format!("notifier:{}:{}:{}", if host.is_empty() { "host" } else { &host }, std::process::id(), &instance[instance.len() - 8..])
}

#[derive(Debug, Clone)]
pub struct NotifierOptions {
    pub backoff: Backoff,
    /// How long one post may take, from connecting to the answer's status.
    pub timeout: Duration,
    /// How often the log is read when no wake-up came.
    pub poll: Duration,
    /// How long a subscription's lease is taken for (at least three
    /// posts' timeouts): how long a notifier that died holds up the others.
    pub lease: Duration,
}

impl Default for NotifierOptions {
    fn default() -> Self {
        NotifierOptions { backoff: Backoff::default(), timeout: Duration::from_secs(10), poll: Duration::from_secs(1), lease: LEASE }
    }
}

/// A refused notification request is a `Rejection`: `Invalid` for the
/// caller's to fix (a bad URL, an unknown project), `NotFound` for no such
/// subscription or attempt.
pub type Outcome<T> = Result<Result<T, Rejection>, StoreError>;

/// A subscription to add.
#[derive(Debug, Clone)]
pub struct NewSubscription {
    pub project: Option<String>,
    pub kinds: Vec<NotificationKind>,
    pub target: NotificationTarget,
    pub url: String,
}

/// A subscription added: its id, and for a webhook its signing secret,
/// the one time it is shown.
#[derive(Debug, Clone)]
pub struct Subscribed {
    pub id: Uuid,
    pub url_shown: String,
    pub secret: Option<String>,
}

/// A new signing secret: the prefix and 32 random bytes in hex.
fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{}{}", notify::SECRET_PREFIX, hex::encode(bytes))
}

/// The value table's key of a subscription's URL or secret. `-notification`
/// is no project name (those never start with '-'), so it never meets a
/// setting's fingerprint.
fn value_fingerprint(installation_key: &[u8], id: Uuid, what: &str, value: &str) -> String {
    fingerprint(installation_key, "-notification", &id.to_string(), what, value)
}

/// Records a subscription: its URL (and a webhook's new secret) to the
/// value table, `NotificationSubscribed` to the notifications stream.
pub async fn subscribe(store: &dyn EventStore, actor: &str, new: NewSubscription) -> Outcome<Subscribed> {
    let url_shown = match notify::check_url(&new.url) {
        Ok(shown) => shown,
        Err(e) => return Ok(Err(Rejection::Invalid(format!("the notification URL is refused: {e}")))),
    };
    if let Some(project) = &new.project {
        if load_project(store, project).await?.is_none() {
            return Ok(Err(Rejection::Invalid(format!("no project `{project}`; create it with `slipway project create`"))));
        }
        // Certificates belong to domains, not projects: it could never fire.
        if new.kinds.contains(&NotificationKind::CertificateRenewalFailed) {
            return Ok(Err(Rejection::Invalid(format!(
                "kind `{}` is not about a project: subscribe to it without a project",
                NotificationKind::CertificateRenewalFailed.as_str()
            ))));
        }
    }
    let id = Uuid::now_v7();
    let key = store.operational().installation_key().await?;
    let url = value_fingerprint(&key, id, "URL", &new.url);
    store.operational().put_value(&url, &new.url).await?;
    let secret = match new.target {
        NotificationTarget::Webhook => {
            let secret = generate_secret();
            let f = value_fingerprint(&key, id, "SECRET", &secret);
            store.operational().put_value(&f, &secret).await?;
            Some((f, secret))
        }
        NotificationTarget::Slack | NotificationTarget::Discord => None,
    };
    let mut kinds = new.kinds;
    kinds.sort();
    kinds.dedup();
    let event = Event::NotificationSubscribed(NotificationSubscribed {
        id,
        project: new.project,
        kinds,
        target: new.target,
        url_shown: url_shown.clone(),
        url,
        secret: secret.as_ref().map(|(f, _)| f.clone()),
    });
    append(store, NOTIFICATIONS_STREAM, actor, &event).await?;
    Ok(Ok(Subscribed { id, url_shown, secret: secret.map(|(_, s)| s) }))
}

/// Removes a subscription: nothing more is sent to it.
pub async fn unsubscribe(store: &dyn EventStore, actor: &str, id: Uuid) -> Outcome<()> {
    if !subscriptions(store).await?.contains_key(&id) {
        return Ok(Err(no_subscription(id)));
    }
    append(store, NOTIFICATIONS_STREAM, actor, &Event::NotificationUnsubscribed(NotificationUnsubscribed { id })).await?;
    Ok(Ok(()))
}

fn no_subscription(id: Uuid) -> Rejection {
    Rejection::NotFound(format!("no notification subscription {id}; `slipway notifications list` shows them"))
}

/// Every live subscription.
pub async fn subscriptions(store: &dyn EventStore) -> Result<Subscriptions, StoreError> {
    let mut subscriptions = Subscriptions::new();
    for r in store.read_stream(NOTIFICATIONS_STREAM, 1).await? {
        if let Ok(event) = r.envelope.decode::<Event>() {
            notify::apply_subscription(&mut subscriptions, &event, log_position(r.position));
        }
    }
    Ok(subscriptions)
}

/// One recorded attempt, with its own id (what `redeliver` takes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub id: Uuid,
    pub subscription: Uuid,
    pub attempt: NotificationAttempted,
}

/// The recorded attempts of one subscription (or of every live one), oldest first.
pub async fn deliveries(store: &dyn EventStore, subscription: Option<Uuid>) -> Outcome<Vec<Attempt>> {
    let ids: Vec<Uuid> = match subscription {
        Some(id) if subscriptions(store).await?.contains_key(&id) => vec![id],
        Some(id) => return Ok(Err(no_subscription(id))),
        None => subscriptions(store).await?.into_keys().collect(),
    };
    let mut out = Vec::new();
    for id in ids {
        for r in store.read_stream(&notification_stream(id), 1).await? {
            if let Ok(Event::NotificationAttempted(attempt)) = r.envelope.decode::<Event>() {
                out.push(Attempt { id: r.envelope.id, subscription: id, attempt });
            }
        }
    }
    out.sort_by_key(|a| (a.attempt.at, a.id));
    Ok(Ok(out))
}

/// Asks the notifier to send the notification of attempt `attempt_id` once
/// more (out of the log's order, tried once). Returns its subscription.
pub async fn redeliver(store: &dyn EventStore, actor: &str, attempt_id: Uuid) -> Outcome<Uuid> {
    let found = match deliveries(store, None).await? {
        Ok(all) => all.into_iter().find(|a| a.id == attempt_id),
        Err(refused) => return Ok(Err(refused)),
    };
    let Some(found) = found else {
        return Ok(Err(Rejection::NotFound(format!(
            "no delivery attempt {attempt_id} of a live subscription; `slipway notifications deliveries` lists them"
        ))));
    };
    let event = Event::NotificationRedeliveryRequested(NotificationRedeliveryRequested { event: found.attempt.event });
    append(store, &notification_stream(found.subscription), actor, &event).await?;
    Ok(Ok(found.subscription))
}

/// Asks the notifier to send subscription `id` every matching event after
/// `from` again, in order (a receiver that lost what it got).
pub async fn replay(store: &dyn EventStore, actor: &str, id: Uuid, from: LogPosition) -> Outcome<()> {
    if !subscriptions(store).await?.contains_key(&id) {
        return Ok(Err(no_subscription(id)));
    }
    let event = Event::NotificationReplayRequested(NotificationReplayRequested { from });
    append(store, &notification_stream(id), actor, &event).await?;
    Ok(Ok(()))
}

async fn append(store: &dyn EventStore, stream: &str, actor: &str, event: &Event) -> Result<Uuid, StoreError> {
    let envelope = envelope(stream, event, Uuid::now_v7(), actor, None);
    let id = envelope.id;
    match store.append(stream, ExpectedVersion::Any, std::slice::from_ref(&envelope), &[]).await? {
        Ok(_) => Ok(id),
        Err(conflict) => Err(StoreError::InvalidAppend { stream: conflict.stream, reason: "an append at any version conflicted".into() }),
    }
}

pub fn log_position(p: Position) -> LogPosition {
    LogPosition { tx: p.tx, seq: p.seq }
}

fn store_position(p: LogPosition) -> Position {
    Position { tx: p.tx, seq: p.seq }
}

/// Sends notifications until `shutdown`. A store failure is logged and
/// the state read again after a pause.
pub async fn run(store: Arc<dyn EventStore>, options: NotifierOptions, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    let client = http_client();
    let me = holder_name();
    let mut wake = store.wakeups();
    let (stopping, stop) = tokio::sync::watch::channel(false);
    loop {
        let loaded = tokio::select! {
            _ = &mut shutdown => return,
            loaded = Notifier::load(&*store, &me) => loaded,
        };
        let outcome = match loaded {
            Ok(mut notifier) => {
                let served = {
                    let serve = notifier.serve(&*store, &client, &options, &mut wake, stop.clone());
                    tokio::pin!(serve);
                    tokio::select! {
                        outcome = &mut serve => Some(outcome),
                        _ = &mut shutdown => {
                            // The pass under way ends first: its posts answered
                            // and recorded, so none is sent twice.
                            let _ = stopping.send(true);
                            let _ = tokio::time::timeout(options.timeout * 2 + RELEASE_WITHIN, &mut serve).await;
                            None
                        }
                    }
                };
                match served {
                    Some(outcome) => outcome,
                    None => return notifier.release(&*store).await,
                }
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => continue, // a replay was asked for: read everything again
            Err(e) => tracing::warn!(error = %e, "notifications: reading or recording failed; trying again"),
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(options.poll) => {}
        }
    }
}

/// A notification waiting to be sent.
#[derive(Debug, Clone)]
struct Pending {
    event: NotifiedEvent,
    notice: Notice,
}

/// One subscription as the notifier serves it.
struct Sub {
    info: Subscription,
    url: Option<String>,
    secret: Option<String>,
    progress: Progress,
    queue: VecDeque<Pending>,
    redeliveries: VecDeque<Pending>,
    /// Attempts made this pass, applied to `progress`, recorded by `flush`.
    unrecorded: Vec<Event>,
    /// Ids of the attempts this notifier appended to the subscription's
    /// stream and already applied (skipped when read back).
    own: HashSet<Uuid>,
}

impl Sub {
    /// Events after this are still to be sent.
    fn after(&self) -> LogPosition {
        self.progress.cursor.unwrap_or(self.info.since)
    }

    /// When its head is due, if it waits for a retry.
    fn due_at(&self) -> Option<DateTime<Utc>> {
        let head = self.queue.front()?;
        self.progress.retrying.as_ref().filter(|r| r.event_id == head.event.event_id).map(|r| r.next_at)
    }

    /// Whether something is to be posted now.
    fn has_due(&self, now: DateTime<Utc>) -> bool {
        !self.redeliveries.is_empty() || (!self.queue.is_empty() && self.due_at().is_none_or(|at| at <= now))
    }

    /// When another notifier's lease runs out, while it holds one and
    /// something waits to be sent.
    fn lease_ends(&self, me: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let lease = self.progress.lease.as_ref().filter(|l| l.holder != me && l.until > now)?;
        self.has_due(now).then_some(lease.until)
    }
}

struct Notifier {
    /// This notifier as a lease holder.
    me: String,
    subs: BTreeMap<Uuid, Sub>,
    /// The notifications stream's version applied.
    version: u64,
    /// Where the reader is in the log.
    reader: Position,
    contexts: HashMap<Uuid, Option<DeploymentContext>>,
}

impl Notifier {
    async fn load(store: &dyn EventStore, me: &str) -> Result<Notifier, StoreError> {
        let mut notifier =
            Notifier { me: me.to_string(), subs: BTreeMap::new(), version: 0, reader: Position::START, contexts: HashMap::new() };
        let mut subscriptions = Subscriptions::new();
        for r in store.read_stream(NOTIFICATIONS_STREAM, 1).await? {
            notifier.version = r.version;
            if let Ok(event) = r.envelope.decode::<Event>() {
                notify::apply_subscription(&mut subscriptions, &event, log_position(r.position));
            }
        }
        for (id, info) in subscriptions {
            let mut sub = Sub::new(store, info).await?;
            for r in store.read_stream(&notification_stream(id), 1).await? {
                if let Ok(event) = r.envelope.decode::<Event>() {
                    sub.progress.apply(&event, r.version);
                }
            }
            for event in sub.progress.redeliveries.clone() {
                if let Some(pending) = notifier.pending(store, &event).await? {
                    sub.redeliveries.push_back(pending);
                }
            }
            notifier.subs.insert(id, sub);
        }
        let checkpoint = store.operational().load_checkpoint(CHECKPOINT).await?;
        notifier.reader = notifier.subs.values().map(|s| store_position(s.after())).fold(checkpoint, Position::min);
        Ok(notifier)
    }

    /// Reads and sends until a replay asks for everything to be read again
    /// or `stop` turns true between two passes (`Ok`), or the store fails.
    async fn serve(
        &mut self,
        store: &dyn EventStore,
        client: &HttpClient,
        options: &NotifierOptions,
        wake: &mut tokio::sync::watch::Receiver<u64>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), StoreError> {
        let mut saved = self.reader;
        loop {
            // Asked to stop: between passes, with nothing in flight.
            if *stop.borrow() {
                return Ok(());
            }
            wake.borrow_and_update();
            loop {
                let batch = store.read_all(self.reader, BATCH).await?;
                let Some(last) = batch.last() else { break };
                let last = last.position;
                for recorded in &batch {
                    if self.read(store, recorded).await? == Read::Reload {
                        return Ok(());
                    }
                }
                self.reader = last;
                if batch.len() < BATCH {
                    break;
                }
            }
            let me = self.me.as_str();
            let sends = self.subs.iter_mut().map(|(id, sub)| deliver(store, client, options, me, *id, sub));
            let delivered = futures::future::join_all(sends).await;
            // What was posted is recorded even when a later post's store read failed.
            flush(store, &mut self.subs).await?;
            delivered.into_iter().collect::<Result<Vec<()>, StoreError>>()?;
            // Nothing is left to send before the reader: a restart may start there.
            let idle = self.subs.values().all(|s| s.queue.is_empty() && s.redeliveries.is_empty());
            if idle && self.reader != saved {
                store.operational().save_checkpoint(CHECKPOINT, self.reader).await?;
                saved = self.reader;
            }
            let now = Utc::now();
            // A subscription with more to send than one pass posts goes on at once.
            let more = self.subs.values().any(|s| s.has_due(now) && s.lease_ends(&self.me, now).is_none());
            let wait = self
                .subs
                .values()
                .flat_map(|s| [s.due_at(), s.lease_ends(&self.me, now)])
                .flatten()
                .chain(more.then_some(now))
                .min()
                .map_or(options.poll, |at| (at - now).to_std().unwrap_or_default().min(options.poll));
            tokio::select! {
                _ = wait_for_wakeup(wake, wait) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Takes one recorded event in: a subscription added or removed, a
    /// request to a subscription, or an event to notify of.
    async fn read(&mut self, store: &dyn EventStore, recorded: &RecordedEvent) -> Result<Read, StoreError> {
        let Ok(event) = recorded.envelope.decode::<Event>() else { return Ok(Read::Next) };
        if recorded.stream == NOTIFICATIONS_STREAM {
            if recorded.version > self.version {
                self.version = recorded.version;
                match &event {
                    Event::NotificationSubscribed(s) => {
                        let info = Subscription { subscribed: s.clone(), since: log_position(recorded.position) };
                        let sub = Sub::new(store, info).await?;
                        self.subs.insert(s.id, sub);
                    }
                    Event::NotificationUnsubscribed(u) => {
                        self.subs.remove(&u.id);
                    }
                    _ => {}
                }
            }
            return Ok(Read::Next);
        }
        if let StreamId::Notification(id) = StreamId::parse(&recorded.stream) {
            let Some(sub) = self.subs.get_mut(&id) else { return Ok(Read::Next) };
            if recorded.version <= sub.progress.version {
                return Ok(Read::Next);
            }
            sub.progress.version = recorded.version;
            if sub.own.remove(&recorded.envelope.id) {
                return Ok(Read::Next);
            }
            match &event {
                Event::NotificationReplayRequested(_) => return Ok(Read::Reload),
                Event::NotificationRedeliveryRequested(r) => {
                    sub.progress.apply(&event, recorded.version);
                    let event = r.event.clone();
                    if let Some(pending) = self.pending(store, &event).await? {
                        if let Some(sub) = self.subs.get_mut(&id) {
                            sub.redeliveries.push_back(pending);
                        }
                    }
                }
                // Another notifier's attempt: it got there first.
                Event::NotificationAttempted(_) => {
                    sub.progress.apply(&event, recorded.version);
                    let after = sub.after();
                    sub.queue.retain(|p| p.event.position > after);
                    let done = |p: &Pending| sub.progress.redeliveries.iter().all(|r| r.event_id != p.event.event_id);
                    let left: VecDeque<Pending> = sub.redeliveries.iter().filter(|p| !done(p)).cloned().collect();
                    sub.redeliveries = left;
                }
                // Another notifier took the lease: it sends until it runs out.
                Event::NotificationLeaseTaken(_) => sub.progress.apply(&event, recorded.version),
                _ => {}
            }
            return Ok(Read::Next);
        }
        if let Event::DeploymentRequested(r) = &event {
            self.remember(r.deployment_id, Some(context_of(r)));
        }
        if !notify::may_notify(&event) {
            return Ok(Read::Next);
        }
        let Some(notice) = self.notice(store, recorded, &event).await? else { return Ok(Read::Next) };
        let position = log_position(recorded.position);
        let notified = NotifiedEvent {
            event_id: recorded.envelope.id,
            stream: recorded.stream.clone(),
            version: recorded.version,
            position,
            kind: notice.kind,
        };
        for sub in self.subs.values_mut() {
            if position > sub.after() && sub.info.wants(&notice) {
                sub.queue.push_back(Pending { event: notified.clone(), notice: notice.clone() });
            }
        }
        Ok(Read::Next)
    }

    /// Hands back the leases this notifier holds (a lease ending now), so
    /// the other engine, or this one started again, sends at once rather
    /// than when they run out. Bounded: a store that does not answer leaves
    /// them to run out.
    async fn release(&mut self, store: &dyn EventStore) {
        let handing_back = async {
            // What was posted is recorded first, or the next notifier sends it again.
            flush(store, &mut self.subs).await?;
            let now = Utc::now();
            for (id, sub) in &self.subs {
                if sub.progress.lease.as_ref().is_some_and(|l| l.holder == self.me && l.until > now) {
                    // At any version (this notifier's own attempts may not be
                    // read back yet): while its lease runs, no other notifier
                    // can have taken it, so this replaces only its own.
                    let event = Event::NotificationLeaseTaken(NotificationLeaseTaken { holder: self.me.clone(), until: now });
                    append(store, &notification_stream(*id), ACTOR, &event).await?;
                }
            }
            Ok::<(), StoreError>(())
        };
        match tokio::time::timeout(RELEASE_WITHIN, handing_back).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "notifications: handing the leases back failed; they run out"),
            Err(_) => tracing::warn!("notifications: handing the leases back took too long; they run out"),
        }
    }

    async fn notice(&mut self, store: &dyn EventStore, recorded: &RecordedEvent, event: &Event) -> Result<Option<Notice>, StoreError> {
        if notify::tells_a_crash_loop(event) && crash_loop_told_recently(store, recorded, event).await? {
            return Ok(None);
        }
        let deployment = match notify::deployment_of(&recorded.stream, event) {
            Some(id) => self.context(store, id).await?.map(|c| (id, c)),
            None => None,
        };
        // Only a failure's words depend on whether a step ran.
        let started = match (event, &deployment) {
            (Event::DeploymentFailed(_), Some((id, _))) => started_before(store, *id, recorded.version).await?,
            _ => true,
        };
        let subject = deployment.as_ref().map(|(id, context)| notify::Subject { id: *id, context, started });
        Ok(notify::notice(event, recorded.envelope.id, recorded.envelope.timestamp, subject))
    }

    /// The notification `event` names, read again from its stream.
    async fn pending(&mut self, store: &dyn EventStore, event: &NotifiedEvent) -> Result<Option<Pending>, StoreError> {
        let found = store.read_stream(&event.stream, event.version).await?.into_iter().find(|r| r.envelope.id == event.event_id);
        let Some(recorded) = found else { return Ok(None) };
        let Ok(decoded) = recorded.envelope.decode::<Event>() else { return Ok(None) };
        Ok(self.notice(store, &recorded, &decoded).await?.map(|notice| Pending { event: event.clone(), notice }))
    }

    async fn context(&mut self, store: &dyn EventStore, deployment: Uuid) -> Result<Option<DeploymentContext>, StoreError> {
        if let Some(known) = self.contexts.get(&deployment) {
            return Ok(known.clone());
        }
        let mut found = None;
        for r in store.read_stream(&deployment_stream(deployment), 1).await? {
            if let Ok(Event::DeploymentRequested(request)) = r.envelope.decode::<Event>() {
                found = Some(context_of(&request));
                break;
            }
        }
        self.remember(deployment, found.clone());
        Ok(found)
    }

    fn remember(&mut self, deployment: Uuid, context: Option<DeploymentContext>) {
        if self.contexts.len() >= CONTEXTS {
            self.contexts.clear();
        }
        self.contexts.insert(deployment, context);
    }
}

/// Whether `deployment` had started (`Deployment::started`, the rule the
/// read model and the CLI word a failure by) before its version `before`:
/// its stream, which is short, folded up to there.
async fn started_before(store: &dyn EventStore, deployment: Uuid, before: u64) -> Result<bool, StoreError> {
    let events: Vec<Event> = store
        .read_stream(&deployment_stream(deployment), 1)
        .await?
        .iter()
        .take_while(|r| r.version < before)
        .filter_map(|r| r.envelope.decode::<Event>().ok())
        .collect();
    Ok(slipway_core::deployment::fold(&events).ok().flatten().is_some_and(|d| d.started()))
}

#[derive(Debug, PartialEq, Eq)]
enum Read {
    Next,
    Reload,
}

fn context_of(request: &slipway_proto::event::DeploymentRequested) -> DeploymentContext {
    DeploymentContext { project: request.project.clone(), environment: request.environment.clone(), git_ref: request.git_ref.clone() }
}

/// How far back a crash-loop record's stream is read for an earlier word
/// of the same loop: several watchers record about every 5 s while a loop
/// lasts, and half a minute is looked at.
const CRASH_LOOP_LOOK_BACK: u64 = 200;

/// Whether a record before `recorded` on its stream told of the crash loop
/// `event` tells of, moments before (`notify::told_recently`): the answer
/// is the log's, the same for every notifier.
async fn crash_loop_told_recently(store: &dyn EventStore, recorded: &RecordedEvent, event: &Event) -> Result<bool, StoreError> {
    let from = recorded.version.saturating_sub(CRASH_LOOP_LOOK_BACK).max(1);
    let read = store.read_stream(&recorded.stream, from).await?;
    let decoded: Vec<(DateTime<Utc>, Event)> = read
        .iter()
        .take_while(|r| r.version < recorded.version)
        .filter(|r| matches!(r.envelope.message_type.as_str(), "ReplicasObserved" | "ContainerSupervised"))
        .filter_map(|r| Some((r.envelope.timestamp, r.envelope.decode::<Event>().ok()?)))
        .collect();
    let earlier: Vec<(DateTime<Utc>, &Event)> = decoded.iter().map(|(at, event)| (*at, event)).collect();
    Ok(notify::told_recently(event, recorded.envelope.timestamp, &earlier, notify::crash_loop_told_within()))
}

impl Sub {
    async fn new(store: &dyn EventStore, info: Subscription) -> Result<Sub, StoreError> {
        let mut wanted = vec![info.subscribed.url.clone()];
        wanted.extend(info.subscribed.secret.clone());
        let mut values = store.operational().values(&wanted).await?;
        let url = values.remove(&info.subscribed.url);
        let secret = info.subscribed.secret.as_ref().and_then(|f| values.remove(f));
        Ok(Sub {
            info,
            url,
            secret,
            progress: Progress::default(),
            queue: VecDeque::new(),
            redeliveries: VecDeque::new(),
            unrecorded: Vec::new(),
            own: HashSet::new(),
        })
    }
}

/// Sends what is due to one subscription: its redeliveries (once each),
/// then its queue in order until one fails (it is retried when due) or
/// nothing is left. Only while this notifier holds the subscription's
/// lease; when another holds it, or took it first, it stops (the other's
/// events are read on the next pass).
async fn deliver(
    store: &dyn EventStore,
    client: &HttpClient,
    options: &NotifierOptions,
    me: &str,
    id: Uuid,
    sub: &mut Sub,
) -> Result<(), StoreError> {
    while let Some(pending) = sub.redeliveries.front().cloned() {
        if !claim(store, options, me, id, sub).await? {
            return Ok(());
        }
        let sent = send(client, options, sub, &pending).await;
        let outcome = if sent.delivered { DeliveryOutcome::Delivered } else { DeliveryOutcome::GaveUp };
        record(id, sub, &pending, 1, sent, outcome, true);
        sub.redeliveries.pop_front();
    }
    while let Some(pending) = sub.queue.front().cloned() {
        if sub.unrecorded.len() >= PASS_POSTS {
            return Ok(());
        }
        let now = Utc::now();
        let (attempt, first_at) = match &sub.progress.retrying {
            Some(r) if r.event_id == pending.event.event_id => {
                if r.next_at > now {
                    return Ok(());
                }
                (r.attempts + 1, r.first_at)
            }
            _ => (1, now),
        };
        if !claim(store, options, me, id, sub).await? {
            return Ok(());
        }
        let sent = send(client, options, sub, &pending).await;
        let outcome = if sent.delivered {
            DeliveryOutcome::Delivered
        } else {
            match options.backoff.next(attempt, first_at, Utc::now()) {
                Next::RetryAt(next_at) => DeliveryOutcome::Retry { next_at },
                Next::GiveUp => DeliveryOutcome::GaveUp,
            }
        };
        let retry = matches!(outcome, DeliveryOutcome::Retry { .. });
        record(id, sub, &pending, attempt, sent, outcome, false);
        if retry {
            return Ok(());
        }
        sub.queue.pop_front();
    }
    Ok(())
}

/// Whether notifier `me` may post for the subscription now: it holds the
/// lease, or took (renewed) it just now. `false` when another notifier
/// holds it or took it first.
async fn claim(store: &dyn EventStore, options: &NotifierOptions, me: &str, id: Uuid, sub: &mut Sub) -> Result<bool, StoreError> {
    // Held for longer than two posts: this one, and the wait for the pass's record.
    match sub.progress.lease_need(me, Utc::now(), lease_length(options), options.timeout * 2) {
        LeaseNeed::Held => Ok(true),
        LeaseNeed::HeldBy(_) => Ok(false),
        LeaseNeed::Take { until } => {
            let event = Event::NotificationLeaseTaken(NotificationLeaseTaken { holder: me.to_string(), until });
            apply_appended(store, id, sub, &event).await
        }
    }
}

/// Appends `event` to the subscription's stream at the version this
/// notifier read and applies it; `false` when the stream moved on first.
async fn apply_appended(store: &dyn EventStore, id: Uuid, sub: &mut Sub, event: &Event) -> Result<bool, StoreError> {
    match append_at(store, id, sub.progress.version, event).await? {
        Some(version) => {
            sub.progress.apply(event, version);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Appends `event` to the subscription's stream if it is still at
/// `version`: the stream's new version, or `None` when it moved on.
async fn append_at(store: &dyn EventStore, id: Uuid, version: u64, event: &Event) -> Result<Option<u64>, StoreError> {
    let stream = notification_stream(id);
    let envelope = envelope(&stream, event, Uuid::now_v7(), ACTOR, None);
    let expected = if version == 0 { ExpectedVersion::NoStream } else { ExpectedVersion::Exactly(version) };
    Ok(store.append(&stream, expected, std::slice::from_ref(&envelope), &[]).await?.ok().map(|appended| appended.version))
}

/// What one post came to.
struct Sent {
    delivered: bool,
    status: Option<u16>,
    error: Option<String>,
    latency: Duration,
}

#[allow(clippy::too_many_arguments)]
fn record(id: Uuid, sub: &mut Sub, pending: &Pending, attempt: u32, sent: Sent, outcome: DeliveryOutcome, redelivery: bool) {
    let (level_ok, kind) = (sent.delivered, pending.event.kind);
    if !level_ok {
        tracing::info!(subscription = %id, %kind, attempt, error = sent.error.as_deref().unwrap_or(""), "notification not delivered");
    }
    let event = Event::NotificationAttempted(NotificationAttempted {
        event: pending.event.clone(),
        attempt,
        status: sent.status,
        error: sent.error,
        latency_ms: u64::try_from(sent.latency.as_millis()).unwrap_or(u64::MAX),
        outcome,
        redelivery,
        at: Utc::now(),
    });
    let version = sub.progress.version;
    sub.progress.apply(&event, version);
    sub.unrecorded.push(event);
}

/// Records every subscription's attempts of this pass, in one transaction:
/// one commit for the pass rather than one per post, so ten subscribers do
/// not make the database commit ten times per event beside the deployments'
/// own writes. At any version: while this notifier holds a lease (for
/// longer than two posts may take when it last posted), only requests from
/// people can have been appended to that stream since, never another
/// notifier's attempt. A crash before this sends the pass's posts again
/// (at least once; each carries its event's id for the receiver to drop a
/// repeat).
async fn flush(store: &dyn EventStore, subs: &mut BTreeMap<Uuid, Sub>) -> Result<(), StoreError> {
    // Kept in `unrecorded` until written: a notifier stopped halfway
    // through writes them when it hands its leases back.
    let written: Vec<(Uuid, String, Vec<Envelope>)> = subs
        .iter()
        .filter(|(_, s)| !s.unrecorded.is_empty())
        .map(|(id, sub)| {
            let stream = notification_stream(*id);
            let envelopes = sub.unrecorded.iter().map(|event| envelope(&stream, event, Uuid::now_v7(), ACTOR, None)).collect();
            (*id, stream, envelopes)
        })
        .collect();
    if written.is_empty() {
        return Ok(());
    }
    let appends: Vec<StreamAppend<'_>> =
        written.iter().map(|(_, stream, events)| StreamAppend { stream, expected: ExpectedVersion::Any, events }).collect();
    if let Err(conflict) = store.append_streams(&appends, &[]).await? {
        return Err(StoreError::InvalidAppend { stream: conflict.stream, reason: "an append at any version conflicted".into() });
    }
    for (id, _, envelopes) in &written {
        if let Some(sub) = subs.get_mut(id) {
            sub.unrecorded.clear();
            sub.own.extend(envelopes.iter().map(|e| e.id));
        }
    }
    Ok(())
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One client for every post: HTTPS against the system's roots, or plain HTTP.
fn http_client() -> HttpClient {
    // With no extra CA only the protocol versions could fail, and ring supports them.
    let config = crate::tls_client::config(None).expect("a TLS client configuration with the system's roots");
    let connector = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_or_http().enable_http1().build();
    Client::builder(TokioExecutor::new()).build(connector)
}

/// Posts one notification to the subscription's target.
async fn send(client: &HttpClient, options: &NotifierOptions, sub: &Sub, pending: &Pending) -> Sent {
    let started = Instant::now();
    let failed = |error: String, status: Option<u16>| Sent { delivered: false, status, error: Some(error), latency: started.elapsed() };
    let Some(url) = &sub.url else {
        return failed("the target URL is not in the value table (or cannot be opened with this secrets key)".into(), None);
    };
    let target = sub.info.subscribed.target;
    if target == NotificationTarget::Webhook && sub.secret.is_none() {
        return failed("the signing secret is not in the value table (or cannot be opened with this secrets key)".into(), None);
    }
    let body = notify::body(target, &pending.notice, pending.event.position);
    let mut request = hyper::Request::post(url.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, concat!("slipway-notifications/", env!("CARGO_PKG_VERSION")));
    if target == NotificationTarget::Webhook {
        let timestamp = Utc::now().timestamp();
        let signature = notify::signature(sub.secret.as_deref().unwrap_or_default(), timestamp, &body);
        request = request
            .header(notify::TIMESTAMP_HEADER, timestamp.to_string())
            .header(notify::SIGNATURE_HEADER, signature)
            .header(notify::DELIVERY_HEADER, pending.event.event_id.to_string())
            .header(notify::KIND_HEADER, pending.event.kind.as_str());
    }
    let request = match request.body(Full::new(Bytes::from(body))) {
        Ok(r) => r,
        Err(_) => return failed("the target URL cannot be requested".into(), None),
    };
    match tokio::time::timeout(options.timeout, client.request(request)).await {
        Ok(Ok(response)) => {
            let status = response.status().as_u16();
            if response.status().is_success() {
                Sent { delivered: true, status: Some(status), error: None, latency: started.elapsed() }
            } else {
                failed(format!("the target answered {status}"), Some(status))
            }
        }
        Ok(Err(e)) => failed(scrub(&crate::error_chain(&e), sub), None),
        Err(_) => failed(format!("no answer within {} ms", options.timeout.as_millis()), None),
    }
}

/// A failure reason without the URL (beyond what is shown) or the secret, cut short.
fn scrub(reason: &str, sub: &Sub) -> String {
    let mut text = reason.to_string();
    if let Some(url) = &sub.url {
        text = text.replace(url.as_str(), &sub.info.subscribed.url_shown);
        if let Some(path) = url.strip_prefix(&sub.info.subscribed.url_shown).filter(|p| p.len() > 1) {
            text = text.replace(path, "/***");
        }
    }
    if let Some(secret) = &sub.secret {
        text = text.replace(secret.as_str(), "***");
    }
    if text.chars().count() > MAX_REASON {
        text = text.chars().take(MAX_REASON).chain(['…']).collect();
    }
    text
}
