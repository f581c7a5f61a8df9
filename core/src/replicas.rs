//! The swarm watcher's decisions, pure. On the swarm runtime nothing of
//! Slipway's runs beside a replica (Swarm restarts and places them), so a
//! watcher (`slipway_node::swarm_watch`) looks at the serving releases'
//! Swarm tasks and the nodes they run on, and this module decides what of
//! it is news for the environment's history and where the route goes:
//!
//! - `Watch::observe` turns successive looks at a service's tasks into
//!   `ReplicasObserved` records — a replica started, failed, rescheduled to
//!   another node, its node down — rate-limited as the single engine's
//!   supervision records are (`supervise`): the first change is recorded at
//!   once, later ones at most every `min_interval`, summarised; `flush`
//!   records what was held back. The first look at a service is the
//!   baseline: the deployment's own events tell how it started.
//!   A service whose replicas fail `loop_failures` times within
//!   `loop_window` is crash-looping: every record while it is carries the
//!   failures counted (`crash_loop`), and one record, once no failure is
//!   left within the window, says it ended (`crash_loop` 0, even with no
//!   other change). The first record of the loop, and one at most every
//!   `repeat_interval` after, tells people (`crash_loop_said`: the
//!   crash-loop notification). That is what the single engine's
//!   `ContainerSupervised` says of one container.
//! - `stranded` says which replicas Swarm wants but cannot place (no node
//!   satisfies their placement, every eligible node drained or lost): they
//!   stay pending and nothing else would tell it — the route keeps the
//!   last replicas, the service still asks for them. One pending longer
//!   than `Limits::grace` (Swarm places a replica within moments when it
//!   can) is recorded as `Unplaceable` with Swarm's reason, and `Placed`
//!   once it runs again; each record carries how many cannot be placed, so
//!   the environment's status shows it. Unlike the other changes this
//!   holds from the first look: a watcher started while replicas are
//!   stranded records it. `correct` records the count put right when the
//!   environment still says some cannot be placed and none is stranded
//!   (placed while no watcher looked, or scaled down by hand).
//! - `reroute` says when the serving release answers elsewhere than its
//!   route says: the replicas that run on a node that is up, a new one only
//!   once it accepted a connection. The engine moves the route through
//!   the one acknowledged reroute there is (`ReleaseUpstreamsObserved` →
//!   `RouteChanged { reason: Reconcile }` → `ReleaseRerouted` →
//!   `RerouteSettled`); never to no upstream at all.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use chrono::{DateTime, Duration, Utc};
use slipway_proto::event::{ReleaseUpstreamsObserved, ReplicaChange, ReplicaChanged, ReplicasObserved};
use uuid::Uuid;

use crate::environment::ActiveRelease;

/// The most changes one record lists; the others are counted in `more`.
pub const LISTED: usize = 32;

/// One Swarm task of a service, as the watcher saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Swarm's task id.
    pub task: String,
    pub slot: u64,
    /// The address of the node it is on (empty while unassigned).
    pub node: String,
    /// The node is ready (not down, not disconnected).
    pub node_up: bool,
    /// Swarm wants it running (not shut down, not replaced).
    pub wanted: bool,
    /// It runs, as last reported by its node.
    pub running: bool,
    /// It failed or was rejected, with Swarm's words.
    pub failed: Option<String>,
    /// `<node address>:<published port>` when it publishes one.
    pub upstream: Option<String>,
    /// Swarm wants it running but has put it on no node (pending), with
    /// Swarm's words ("no suitable node (...)"), or empty when it gave none.
    pub unplaced: Option<String>,
}

impl Replica {
    /// Running where routers can reach it, and meant to.
    pub fn serving(&self) -> bool {
        self.wanted && self.running && self.node_up
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub min_interval: Duration,
    /// How long a replica may stay unplaced before it is recorded: Swarm
    /// places one it can within moments (a new task is pending briefly).
    pub grace: Duration,
    /// This many replica failures of one service within `loop_window` is
    /// a crash loop (the single engine's `supervise::Limits` for one
    /// container's exits).
    pub loop_failures: usize,
    pub loop_window: Duration,
    /// How often a record says again that a crash loop goes on.
    pub repeat_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        let single = crate::supervise::Limits::default();
        Limits {
            min_interval: Duration::seconds(5),
            grace: Duration::seconds(3),
            loop_failures: single.loop_exits,
            loop_window: single.loop_window,
            repeat_interval: single.repeat_interval,
        }
    }
}

/// What Swarm says when it gives no reason for a pending replica.
const NO_REASON: &str = "Swarm has not placed it on any node";

/// The replicas Swarm wants but has put on no node, by slot, with Swarm's
/// reason: none while `wanted` replicas serve (a spare task pending during
/// an update strands nothing), else at most the ones missing, and never a
/// slot that has a serving replica. Pure.
pub fn stranded(replicas: &[Replica], wanted: u32) -> BTreeMap<u64, String> {
    let serving: BTreeSet<u64> = replicas.iter().filter(|r| r.serving()).map(|r| r.slot).collect();
    let missing = usize::try_from(wanted).unwrap_or(usize::MAX).saturating_sub(serving.len());
    let mut found = BTreeMap::new();
    for r in replicas.iter().filter(|r| r.wanted && !serving.contains(&r.slot)) {
        if let Some(reason) = &r.unplaced {
            let reason = if reason.trim().is_empty() { NO_REASON.to_string() } else { reason.trim().to_string() };
            found.entry(r.slot).or_insert(reason);
        }
    }
    found.into_iter().take(missing).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    running: bool,
    failed: bool,
    node_up: bool,
}

#[derive(Debug, Clone)]
struct Track {
    deployment: Uuid,
    tasks: BTreeMap<String, Seen>,
    /// The node each slot last ran on.
    slots: BTreeMap<u64, String>,
    pending: Vec<ReplicaChanged>,
    running: u32,
    wanted: u32,
    recorded_at: Option<DateTime<Utc>>,
    role: String,
    /// Since when each slot has been stranded (`stranded`).
    stranded_since: BTreeMap<u64, DateTime<Utc>>,
    /// Slots recorded as unplaceable and not placed since.
    unplaceable: BTreeSet<u64>,
    /// Of those, the ones still stranded, and Swarm's reason for the first.
    unplaced: u32,
    reason: String,
    /// When the service's replicas failed, within the loop window.
    failures: VecDeque<DateTime<Utc>>,
    /// The crash loop as last recorded: its failures, 0 for none.
    loop_count: u32,
    /// When a record last told of the crash loop going on now; `None`
    /// while there is none.
    loop_said_at: Option<DateTime<Utc>>,
}

impl Track {
    /// Records the slots stranded past the grace, forgets those no longer
    /// asked for (the service scaled down), and keeps the count a record
    /// carries.
    fn strand(&mut self, replicas: &[Replica], wanted: u32, grace: Duration, at: DateTime<Utc>) {
        let now = stranded(replicas, wanted);
        self.stranded_since.retain(|slot, _| now.contains_key(slot));
        for (slot, reason) in &now {
            let since = *self.stranded_since.entry(*slot).or_insert(at);
            if at - since >= grace && self.unplaceable.insert(*slot) {
                self.pending.push(ReplicaChanged {
                    slot: *slot,
                    change: ReplicaChange::Unplaceable,
                    node: String::new(),
                    from: String::new(),
                    error: reason.clone(),
                });
            }
        }
        self.unplaceable.retain(|slot| now.contains_key(slot) || replicas.iter().any(|r| r.slot == *slot && r.wanted));
        let still: Vec<&String> = now.iter().filter(|(slot, _)| self.unplaceable.contains(slot)).map(|(_, reason)| reason).collect();
        self.unplaced = u32::try_from(still.len()).unwrap_or(u32::MAX);
        self.reason = still.first().map(|r| r.to_string()).unwrap_or_default();
    }
}

/// Every watched service's track, and the limits.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    limits: Limits,
    services: BTreeMap<String, Track>,
}

impl Watch {
    pub fn new(limits: Limits) -> Watch {
        Watch { limits, services: BTreeMap::new() }
    }

    /// One look at `service` (of `deployment`, which serves, in `role`;
    /// `wanted` replicas asked for) at `at`: the record due now, if any.
    pub fn observe(
        &mut self,
        service: &str,
        role: &str,
        deployment: Uuid,
        replicas: &[Replica],
        wanted: u32,
        at: DateTime<Utc>,
    ) -> Option<ReplicasObserved> {
        let running = u32::try_from(replicas.iter().filter(|r| r.serving()).count()).unwrap_or(u32::MAX);
        let grace = self.limits.grace;
        let Some(track) = self.services.get_mut(service) else {
            let mut track = Track {
                deployment,
                tasks: BTreeMap::new(),
                slots: BTreeMap::new(),
                pending: Vec::new(),
                running,
                wanted,
                recorded_at: None,
                role: role.to_string(),
                stranded_since: BTreeMap::new(),
                unplaceable: BTreeSet::new(),
                unplaced: 0,
                reason: String::new(),
                failures: VecDeque::new(),
                loop_count: 0,
                loop_said_at: None,
            };
            for r in replicas {
                track.tasks.insert(r.task.clone(), seen(r));
                if r.running && !r.node.is_empty() {
                    track.slots.insert(r.slot, r.node.clone());
                }
            }
            track.strand(replicas, wanted, grace, at);
            self.services.insert(service.to_string(), track);
            return None;
        };
        track.deployment = deployment;
        track.role = role.to_string();
        for r in replicas {
            let before = track.tasks.get(&r.task).copied();
            let now = seen(r);
            let change = |change: ReplicaChange, from: String, error: String| ReplicaChanged {
                slot: r.slot,
                change,
                node: r.node.clone(),
                from,
                error,
            };
            if before.is_some_and(|b| b.node_up) && !r.node_up && !r.node.is_empty() {
                track.pending.push(change(ReplicaChange::NodeDown, String::new(), String::new()));
            }
            if r.running && r.node_up && !before.is_some_and(|b| b.running) {
                let moved = track.slots.get(&r.slot).filter(|n| **n != r.node).cloned();
                match moved {
                    _ if track.unplaceable.remove(&r.slot) => {
                        track.pending.push(change(ReplicaChange::Placed, String::new(), String::new()))
                    }
                    Some(from) => track.pending.push(change(ReplicaChange::Rescheduled, from, String::new())),
                    None => track.pending.push(change(ReplicaChange::Started, String::new(), String::new())),
                }
                track.slots.insert(r.slot, r.node.clone());
            }
            if let (Some(error), false) = (&r.failed, before.is_some_and(|b| b.failed)) {
                track.pending.push(change(ReplicaChange::Failed, String::new(), error.clone()));
                track.failures.push_back(at);
            }
            track.tasks.insert(r.task.clone(), now);
        }
        // Tasks Swarm no longer lists (pruned history) are forgotten.
        track.tasks.retain(|task, _| replicas.iter().any(|r| &r.task == task));
        track.running = running;
        track.wanted = wanted;
        track.strand(replicas, wanted, grace, at);
        due(service, track, &self.limits, at)
    }

    /// A record that puts the environment's status right when it still
    /// says `recorded_unplaced` replicas of `service` cannot be placed but
    /// none is stranded now: they were placed, or no longer asked for,
    /// while no watcher looked (it restarted), or a slot went away
    /// unplaced (scaled down by hand). Nothing while a record is held
    /// back (it carries the count) or before the first look.
    pub fn correct(
        &mut self,
        service: &str,
        recorded_unplaced: u32,
        replicas: &[Replica],
        wanted: u32,
        at: DateTime<Utc>,
    ) -> Option<ReplicasObserved> {
        let track = self.services.get_mut(service)?;
        let recent = track.recorded_at.is_some_and(|last| at - last < self.limits.min_interval);
        if recorded_unplaced == 0 || recent || !track.pending.is_empty() || !stranded(replicas, wanted).is_empty() {
            return None;
        }
        track.recorded_at = Some(at);
        // Nothing is stranded now, whatever the track last counted.
        Some(ReplicasObserved { unplaced: 0, reason: String::new(), ..record(service, track, Vec::new(), 0) })
    }

    /// The records held back that are due at `now`.
    pub fn flush(&mut self, now: DateTime<Utc>) -> Vec<ReplicasObserved> {
        let limits = self.limits;
        self.services.iter_mut().filter_map(|(service, track)| due(service, track, &limits, now)).collect()
    }

    /// Stops watching services for which `keep` says no (no longer serving).
    pub fn retain(&mut self, mut keep: impl FnMut(&str, Uuid) -> bool) {
        self.services.retain(|service, t| keep(service, t.deployment));
    }
}

fn seen(r: &Replica) -> Seen {
    Seen { running: r.running && r.node_up, failed: r.failed.is_some(), node_up: r.node_up }
}

/// The record due at `now`: the changes held back, once `min_interval`
/// passed since the last; or, with none held back, the end of a crash loop
/// recorded before (no failure left that would make one), so that nothing
/// keeps saying a loop that stopped.
fn due(service: &str, track: &mut Track, limits: &Limits, now: DateTime<Utc>) -> Option<ReplicasObserved> {
    if track.recorded_at.is_some_and(|at| now - at < limits.min_interval) {
        return None;
    }
    let loop_count = loop_failures(track, limits, now);
    let loop_ended = track.loop_count > 0 && loop_count == 0;
    if track.pending.is_empty() && !loop_ended {
        return None;
    }
    let mut changes = std::mem::take(&mut track.pending);
    let more = u32::try_from(changes.len().saturating_sub(LISTED)).unwrap_or(u32::MAX);
    changes.truncate(LISTED);
    track.recorded_at = Some(now);
    track.loop_count = loop_count;
    // Told at the loop's first record, then at most every `repeat_interval`.
    let said = track.loop_count > 0 && track.loop_said_at.is_none_or(|said| now - said >= limits.repeat_interval);
    if said {
        track.loop_said_at = Some(now);
    } else if track.loop_count == 0 {
        track.loop_said_at = None;
    }
    Some(ReplicasObserved { crash_loop_said: said, ..record(service, track, changes, more) })
}

/// The failures within `loop_window` before `now` when they make a crash
/// loop, else 0; older ones are forgotten.
fn loop_failures(track: &mut Track, limits: &Limits, now: DateTime<Utc>) -> u32 {
    while track.failures.front().is_some_and(|at| now - *at > limits.loop_window) {
        track.failures.pop_front();
    }
    if track.failures.len() < limits.loop_failures.max(1) {
        0
    } else {
        u32::try_from(track.failures.len()).unwrap_or(u32::MAX)
    }
}

/// The record of `service` as `track` stands, with `changes`.
fn record(service: &str, track: &Track, changes: Vec<ReplicaChanged>, more: u32) -> ReplicasObserved {
    ReplicasObserved {
        deployment_id: track.deployment,
        service: service.to_string(),
        changes,
        more,
        running: track.running,
        wanted: track.wanted,
        unplaced: track.unplaced,
        reason: track.reason.clone(),
        role: track.role.clone(),
        crash_loop: track.loop_count,
        crash_loop_said: false,
    }
}

/// The upstreams of `replicas` not in the route yet: the ones the watcher
/// must see accept a connection before the route takes them.
pub fn unrecorded(active: &ActiveRelease, replicas: &[Replica]) -> Vec<String> {
    let recorded: BTreeSet<&String> = active.upstreams.iter().collect();
    let new: BTreeSet<String> = replicas.iter().filter(|r| r.serving()).filter_map(|r| r.upstream.clone()).collect();
    new.into_iter().filter(|u| !recorded.contains(u)).collect()
}

/// Where the serving release answers now, when that is not where it is
/// recorded to answer: every serving replica's upstream that is recorded
/// already or `answering` (accepted a connection). `None` when nothing
/// changed, or when no replica would be left (the recorded ones stay: the
/// routers eject what does not answer).
pub fn reroute(active: &ActiveRelease, replicas: &[Replica], answering: &BTreeSet<String>) -> Option<ReleaseUpstreamsObserved> {
    let recorded: BTreeSet<&String> = active.upstreams.iter().collect();
    let now: BTreeSet<String> = replicas
        .iter()
        .filter(|r| r.serving())
        .filter_map(|r| r.upstream.clone())
        .filter(|u| recorded.contains(u) || answering.contains(u))
        .collect();
    if now.is_empty() || now.iter().eq(recorded.iter().copied()) {
        return None;
    }
    Some(ReleaseUpstreamsObserved {
        deployment_id: active.deployment,
        upstreams: now.into_iter().collect(),
        previous: active.upstreams.clone(),
        host: "swarm".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).expect("a time")
    }

    fn replica(task: &str, slot: u64, node: &str, running: bool) -> Replica {
        Replica {
            task: task.into(),
            slot,
            node: node.into(),
            node_up: true,
            wanted: true,
            running,
            failed: None,
            upstream: running.then(|| format!("{node}:3000{slot}")),
            unplaced: None,
        }
    }

    /// A task Swarm put on no node, with its reason.
    fn pending(task: &str, slot: u64, reason: &str) -> Replica {
        Replica { node: String::new(), unplaced: Some(reason.into()), ..replica(task, slot, "", false) }
    }

    const NO_NODE: &str = "no suitable node (scheduling constraints not satisfied on 3 nodes)";

    #[test]
    fn a_status_left_saying_unplaceable_is_put_right_once_nothing_is_stranded() {
        let mut w = Watch::default();
        let d = Uuid::from_u128(7);
        // A watcher that starts after the replicas were placed again (the
        // environment's last record still says 2 cannot be placed).
        assert_eq!(w.correct("svc", 2, &three(), 3, at(0)), None, "nothing before the first look");
        w.observe("svc", "web", d, &three(), 3, at(0));
        let fixed = w.correct("svc", 2, &three(), 3, at(1)).expect("a record putting the count right");
        assert_eq!((fixed.unplaced, fixed.running, fixed.wanted, fixed.changes.len()), (0, 3, 3, 0));
        assert_eq!(fixed.role, "web");
        // Nothing when the status already says none, or while one is still stranded.
        assert_eq!(w.correct("svc", 2, &three(), 3, at(2)), None, "not again within the interval (the status may lag)");
        assert_eq!(w.correct("svc", 0, &three(), 3, at(20)), None);
        let mut stuck = three();
        stuck[2] = pending("t9", 3, NO_NODE);
        assert_eq!(w.correct("svc", 1, &stuck, 3, at(30)), None);
        assert!(w.correct("svc", 1, &three(), 3, at(30)).is_some(), "past the interval, with none stranded");
    }

    fn three() -> Vec<Replica> {
        vec![replica("t1", 1, "n1", true), replica("t2", 2, "n2", true), replica("t3", 3, "n3", true)]
    }

    fn active(upstreams: &[&str]) -> ActiveRelease {
        ActiveRelease {
            deployment: Uuid::from_u128(7),
            containers: vec!["svc".into()],
            upstreams: upstreams.iter().map(|u| u.to_string()).collect(),
            host: "swarm".into(),
        }
    }

    fn kinds(record: &ReplicasObserved) -> Vec<(u64, ReplicaChange, &str, &str)> {
        record.changes.iter().map(|c| (c.slot, c.change, c.node.as_str(), c.from.as_str())).collect()
    }

    #[test]
    fn the_first_look_is_the_baseline() {
        let mut w = Watch::default();
        assert_eq!(w.observe("svc", "web", Uuid::from_u128(7), &three(), 3, at(0)), None);
        assert_eq!(w.observe("svc", "web", Uuid::from_u128(7), &three(), 3, at(1)), None, "nothing changed");
        assert!(w.flush(at(60)).is_empty());
    }

    #[test]
    fn a_lost_node_is_recorded_at_once_and_the_reschedule_after_the_interval() {
        let mut w = Watch::default();
        let d = Uuid::from_u128(7);
        w.observe("svc", "web", d, &three(), 3, at(0));
        // n3 goes down: Swarm shuts its task down and places slot 3 anew.
        let mut down = three();
        down[2].node_up = false;
        down[2].wanted = false;
        down.push(Replica { upstream: None, running: false, ..replica("t4", 3, "n1", false) });
        let first = w.observe("svc", "web", d, &down, 3, at(10)).expect("recorded at once");
        assert_eq!(kinds(&first), vec![(3, ReplicaChange::NodeDown, "n3", "")]);
        assert_eq!((first.running, first.wanted), (2, 3));
        // The new task runs on n1 a second later: held back for the interval.
        down[3] = replica("t4", 3, "n1", true);
        assert_eq!(w.observe("svc", "web", d, &down, 3, at(11)), None);
        assert!(w.flush(at(14)).is_empty());
        let later = w.flush(at(15));
        assert_eq!(later.len(), 1);
        assert_eq!(kinds(&later[0]), vec![(3, ReplicaChange::Rescheduled, "n1", "n3")]);
        assert_eq!(later[0].running, 3);
        assert!(w.flush(at(100)).is_empty(), "recorded once");
    }

    #[test]
    fn failures_and_restarts_on_the_same_node_are_summarised() {
        let mut w = Watch::default();
        let d = Uuid::from_u128(7);
        w.observe("svc", "web", d, &three(), 3, at(0));
        let mut tasks = three();
        tasks[0] = Replica { failed: Some("task: non-zero exit (1)".into()), wanted: false, ..replica("t1", 1, "n1", false) };
        let failed = w.observe("svc", "web", d, &tasks, 3, at(1)).expect("at once");
        assert_eq!(failed.changes[0].change, ReplicaChange::Failed);
        assert_eq!(failed.changes[0].error, "task: non-zero exit (1)");
        // Restarted on the same node, failing again and again: one summary.
        for i in 0..100u64 {
            tasks.push(Replica { failed: Some("exit".into()), wanted: false, ..replica(&format!("r{i}"), 1, "n1", false) });
            assert_eq!(w.observe("svc", "web", d, &tasks, 3, at(2)), None);
        }
        tasks.push(replica("ok", 1, "n1", true));
        assert_eq!(w.observe("svc", "web", d, &tasks, 3, at(3)), None);
        let summary = w.flush(at(6)).pop().expect("a summary");
        assert_eq!(summary.changes.len(), LISTED);
        assert_eq!(summary.more, 101 - LISTED as u32);
        assert!(summary.changes.iter().all(|c| c.change == ReplicaChange::Failed));
        assert_eq!((failed.crash_loop, summary.crash_loop), (0, 101), "one failure is no loop; 101 within a minute are");
        assert!(summary.crash_loop_said);
    }

    #[test]
    fn a_crash_loop_is_carried_while_it_lasts_told_once_a_minute_and_ended_by_a_record() {
        let mut w = Watch::default();
        let d = Uuid::from_u128(7);
        w.observe("svc", "web", d, &three(), 3, at(0));
        let mut tasks = three();
        // Slot 1 fails every 10 s, each time a new task: (failures counted, told).
        let fail = |w: &mut Watch, n: i64, tasks: &mut Vec<Replica>| {
            tasks.push(Replica { failed: Some(format!("exit {n}")), wanted: false, ..replica(&format!("f{n}"), 1, "n1", false) });
            w.observe("svc", "web", d, tasks, 3, at(n * 10)).map(|r| (r.crash_loop, r.crash_loop_said))
        };
        assert_eq!(fail(&mut w, 1, &mut tasks), Some((0, false)));
        assert_eq!(fail(&mut w, 2, &mut tasks), Some((0, false)));
        assert_eq!(fail(&mut w, 3, &mut tasks), Some((3, true)), "the third failure within a minute is a loop, told at once");
        assert_eq!(fail(&mut w, 4, &mut tasks), Some((4, false)), "carried, not told again within a minute");
        for n in 5..9 {
            assert_eq!(fail(&mut w, n, &mut tasks).map(|(_, told)| told), Some(false), "at {}s", n * 10);
        }
        assert_eq!(fail(&mut w, 9, &mut tasks), Some((7, true)), "told again a minute later, with the 7 failures of the last minute");
        // It stops at 90 s: nothing is due while failures within a minute
        // still make a loop; then one record with no change ends it.
        assert!(w.flush(at(120)).is_empty(), "4 failures left within the minute");
        let ended = w.flush(at(145)).pop().expect("the loop's end recorded");
        assert_eq!((ended.crash_loop, ended.crash_loop_said, ended.changes.len()), (0, false, 0));
        assert!(w.flush(at(200)).is_empty(), "ended once");
        // A new loop is told at once.
        w.observe("svc", "web", d, &tasks, 3, at(300));
        assert_eq!(fail(&mut w, 31, &mut tasks), Some((0, false)));
        assert_eq!(fail(&mut w, 32, &mut tasks), Some((0, false)));
        assert_eq!(fail(&mut w, 33, &mut tasks), Some((3, true)));
    }

    #[test]
    fn services_no_longer_serving_are_forgotten() {
        let mut w = Watch::default();
        w.observe("old", "web", Uuid::from_u128(1), &three(), 3, at(0));
        w.observe("new", "web", Uuid::from_u128(2), &three(), 3, at(0));
        w.retain(|_, d| d == Uuid::from_u128(2));
        // "old" looked at again is a baseline again: nothing recorded.
        let mut gone = three();
        gone[0].node_up = false;
        assert_eq!(w.observe("old", "web", Uuid::from_u128(1), &gone, 3, at(1)), None);
        assert!(w.observe("new", "web", Uuid::from_u128(2), &gone, 3, at(1)).is_some());
    }

    #[test]
    fn stranded_replicas_are_the_unplaced_ones_the_service_is_short_of() {
        let mut tasks = three();
        assert!(stranded(&tasks, 3).is_empty());
        // Slot 3's task shut down, its replacement placed nowhere.
        tasks[2].wanted = false;
        tasks.push(pending("t4", 3, NO_NODE));
        assert_eq!(stranded(&tasks, 3), BTreeMap::from([(3, NO_NODE.to_string())]));
        // A spare pending task while every wanted replica serves strands nothing.
        assert!(stranded(&tasks, 2).is_empty());
        // No reason from Swarm: said plainly; a task not wanted any more is no replica.
        let quiet = vec![pending("a", 1, " "), Replica { wanted: false, ..pending("b", 2, NO_NODE) }];
        assert_eq!(stranded(&quiet, 2), BTreeMap::from([(1, NO_REASON.to_string())]));
        // A slot that has a serving replica is not stranded.
        let both = vec![replica("old", 1, "n1", true), pending("new", 1, NO_NODE), pending("t2", 2, NO_NODE)];
        assert_eq!(stranded(&both, 2), BTreeMap::from([(2, NO_NODE.to_string())]));
    }

    #[test]
    fn replicas_no_node_can_take_are_recorded_after_the_grace_and_again_once_placed() {
        let mut w = Watch::default();
        let d = Uuid::from_u128(7);
        w.observe("svc", "web", d, &three(), 3, at(0));
        // Placement changed by hand: two slots' tasks replaced by pending ones.
        let mut tasks = three();
        for t in &mut tasks[1..] {
            t.wanted = false;
            t.running = false;
        }
        tasks.push(pending("t4", 2, NO_NODE));
        tasks.push(pending("t5", 3, NO_NODE));
        assert_eq!(w.observe("svc", "web", d, &tasks, 3, at(10)), None, "within the grace");
        assert_eq!(w.observe("svc", "web", d, &tasks, 3, at(12)), None, "within the grace");
        let record = w.observe("svc", "web", d, &tasks, 3, at(13)).expect("recorded once the grace passed");
        assert_eq!(kinds(&record), vec![(2, ReplicaChange::Unplaceable, "", ""), (3, ReplicaChange::Unplaceable, "", "")]);
        assert!(record.changes.iter().all(|c| c.error == NO_NODE), "{record:?}");
        assert_eq!((record.running, record.wanted, record.unplaced), (1, 3, 2));
        assert_eq!((record.reason.as_str(), record.role.as_str()), (NO_NODE, "web"));
        // Still stranded: recorded once, not again on every look.
        assert_eq!(w.observe("svc", "web", d, &tasks, 3, at(30)), None);
        assert!(w.flush(at(60)).is_empty());
        // A node satisfies the placement again: both run on n1.
        tasks[3] = replica("t4", 2, "n1", true);
        tasks[4] = replica("t5", 3, "n1", true);
        let placed = w.observe("svc", "web", d, &tasks, 3, at(61)).expect("recorded");
        assert_eq!(kinds(&placed), vec![(2, ReplicaChange::Placed, "n1", ""), (3, ReplicaChange::Placed, "n1", "")]);
        assert_eq!((placed.running, placed.unplaced, placed.reason.as_str()), (3, 0, ""));
    }

    #[test]
    fn a_replica_placed_within_the_grace_is_no_news_and_a_stranded_one_is_recorded_from_the_first_look() {
        let mut w = Watch::default();
        let d = Uuid::from_u128(7);
        w.observe("svc", "web", d, &three(), 3, at(0));
        let mut tasks = three();
        tasks[0].wanted = false;
        tasks[0].running = false;
        tasks.push(pending("t4", 1, "pending task scheduling"));
        assert_eq!(w.observe("svc", "web", d, &tasks, 3, at(1)), None);
        tasks[3] = replica("t4", 1, "n1", true);
        let started = w.observe("svc", "web", d, &tasks, 3, at(2)).expect("a start");
        assert_eq!(kinds(&started), vec![(1, ReplicaChange::Started, "n1", "")]);
        assert_eq!(started.unplaced, 0);
        // A watcher that starts while a replica is stranded records it.
        let mut fresh = Watch::default();
        let stuck = vec![pending("p1", 1, NO_NODE)];
        assert_eq!(fresh.observe("svc", "web", d, &stuck, 1, at(0)), None, "the first look");
        let record = fresh.observe("svc", "web", d, &stuck, 1, at(3)).expect("after the grace");
        assert_eq!((record.running, record.wanted, record.unplaced), (0, 1, 1));
    }

    #[test]
    fn a_stranded_slot_the_service_no_longer_asks_for_is_forgotten() {
        let mut w = Watch::default();
        let d = Uuid::from_u128(7);
        let mut tasks = vec![replica("t1", 1, "n1", true), pending("t2", 2, NO_NODE)];
        w.observe("svc", "web", d, &tasks, 2, at(0));
        assert_eq!(w.observe("svc", "web", d, &tasks, 2, at(5)).map(|r| r.unplaced), Some(1));
        // Scaled down to one by hand: slot 2's task is no longer wanted.
        tasks[1].wanted = false;
        assert_eq!(w.observe("svc", "web", d, &tasks, 1, at(20)), None);
        // Should slot 2 come back and run, it is a start, not a placement.
        tasks.push(replica("t3", 2, "n2", true));
        let record = w.observe("svc", "web", d, &tasks, 2, at(30)).expect("a start");
        assert_eq!(kinds(&record), vec![(2, ReplicaChange::Started, "n2", "")]);
    }

    #[test]
    fn the_environment_keeps_the_serving_release_s_last_record_of_each_service() {
        use slipway_proto::event::{DeploymentEnqueued, DeploymentFinished};
        use slipway_proto::Event;
        let d = Uuid::from_u128(7);
        let finished = |deployment_id| {
            Event::DeploymentFinished(DeploymentFinished {
                deployment_id,
                succeeded: true,
                containers: vec!["svc".into()],
                upstreams: vec![],
                dry_run: false,
                host: "swarm".into(),
            })
        };
        let mut w = Watch::default();
        w.observe("svc", "web", d, &three(), 3, at(0));
        let mut tasks = three();
        tasks[0].wanted = false;
        tasks.push(pending("t4", 1, NO_NODE));
        w.observe("svc", "web", d, &tasks, 3, at(1));
        let stranded = w.observe("svc", "web", d, &tasks, 3, at(4)).expect("a record");
        let mut history = vec![
            Event::DeploymentEnqueued(DeploymentEnqueued { deployment_id: d }),
            finished(d),
            Event::ReplicasObserved(stranded.clone()),
        ];
        let env = crate::environment::fold(&history);
        let svc = env.replicas.get("svc").expect("the service");
        assert_eq!((svc.role.as_str(), svc.running, svc.wanted, svc.unplaced, svc.reason.as_str()), ("web", 2, 3, 1, NO_NODE));
        // Another release's record is not this one's; a new release starts clean.
        let other = ReplicasObserved { deployment_id: Uuid::from_u128(9), unplaced: 0, ..stranded.clone() };
        history.push(Event::ReplicasObserved(other));
        assert_eq!(crate::environment::fold(&history).replicas.get("svc").map(|s| s.unplaced), Some(1));
        history.push(finished(Uuid::from_u128(9)));
        assert!(crate::environment::fold(&history).replicas.is_empty());
    }

    #[test]
    fn the_route_drops_a_lost_replica_and_takes_a_new_one_once_it_answers() {
        let recorded = active(&["n1:30001", "n2:30002", "n3:30003"]);
        assert_eq!(reroute(&recorded, &three(), &BTreeSet::new()), None, "as recorded");
        let mut tasks = three();
        tasks[2].node_up = false;
        let lost = reroute(&recorded, &tasks, &BTreeSet::new()).expect("without n3");
        assert_eq!(lost.upstreams, vec!["n1:30001", "n2:30002"]);
        assert_eq!(lost.previous, recorded.upstreams);
        // Slot 3 runs again on n1, on a new port: only once it answers.
        let now = active(&["n1:30001", "n2:30002"]);
        tasks.push(Replica { upstream: Some("n1:31003".into()), ..replica("t4", 3, "n1", true) });
        assert_eq!(unrecorded(&now, &tasks), vec!["n1:31003"]);
        assert_eq!(reroute(&now, &tasks, &BTreeSet::new()), None, "not answering yet");
        let answering = BTreeSet::from(["n1:31003".to_string()]);
        let back = reroute(&now, &tasks, &answering).expect("with the new replica");
        assert_eq!(back.upstreams, vec!["n1:30001", "n1:31003", "n2:30002"]);
    }

    #[test]
    fn the_route_never_goes_to_nothing() {
        let recorded = active(&["n1:30001"]);
        let mut tasks = vec![replica("t1", 1, "n1", true)];
        tasks[0].node_up = false;
        assert_eq!(reroute(&recorded, &tasks, &BTreeSet::new()), None);
    }
}
