//! Supervision, pure: Docker's container events for the serving release
//! (exits, OOM kills, starts, health changes) folded per container into a
//! live state, and turned into few records. A container that crashes a
//! thousand times produces a handful of `ContainerSupervised` events, each
//! summarising the exits since the one before, not a thousand.
//!
//! The limits: a change of state is recorded at once the first time and at
//! most every `min_interval` after that; the same state again (a crash loop
//! going on) at most every `repeat_interval`, and only if something
//! happened. What is held back is kept and summarised by the next record;
//! the host agent calls `flush` periodically so a held-back change is
//! recorded even when Docker says nothing more.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Duration, Utc};
use slipway_proto::event::{ContainerSupervised, LiveState};
use uuid::Uuid;

/// What Docker reported about a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// It exited; `restarting` when Docker will start it again (its
    /// restart policy says so).
    Died {
        exit_code: Option<i64>,
        restarting: bool,
    },
    OomKilled,
    Started,
    Health {
        healthy: bool,
    },
}

impl Signal {
    /// The signal in one of Docker's container event actions (`die` with
    /// its exit code, `oom`, `start`, `health_status: healthy`); `None` for
    /// the actions supervision does not follow.
    pub fn of_docker_action(action: &str, exit_code: Option<i64>) -> Option<Signal> {
        match action {
            "die" => Some(Signal::Died { exit_code, restarting: false }),
            "oom" => Some(Signal::OomKilled),
            "start" => Some(Signal::Started),
            a => a.strip_prefix("health_status:").map(|h| Signal::Health { healthy: h.trim() == "healthy" }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub min_interval: Duration,
    pub repeat_interval: Duration,
    /// This many exits within `loop_window` is a crash loop.
    pub loop_exits: usize,
    pub loop_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            min_interval: Duration::seconds(5),
            repeat_interval: Duration::seconds(60),
            loop_exits: 3,
            loop_window: Duration::seconds(60),
        }
    }
}

#[derive(Debug, Clone)]
struct Track {
    deployment: Uuid,
    recent_exits: VecDeque<DateTime<Utc>>,
    running: bool,
    /// Exited, and Docker is starting it again.
    restarting: bool,
    healthy: bool,
    restarts: u32,
    exits_since: u32,
    oom_since: bool,
    last_exit: Option<i64>,
    recorded: Option<(DateTime<Utc>, LiveState)>,
}

/// Every watched container's track, and the limits.
#[derive(Debug, Clone, Default)]
pub struct Supervisor {
    limits: Limits,
    tracks: BTreeMap<String, Track>,
}

impl Supervisor {
    pub fn new(limits: Limits) -> Supervisor {
        Supervisor { limits, tracks: BTreeMap::new() }
    }

    /// Takes one signal about `container` (of `deployment`, which serves) at
    /// `at`; returns the record due now, if any.
    pub fn observe(&mut self, container: &str, deployment: Uuid, signal: Signal, at: DateTime<Utc>) -> Option<ContainerSupervised> {
        let track = self.tracks.entry(container.to_string()).or_insert_with(|| Track {
            deployment,
            recent_exits: VecDeque::new(),
            running: true,
            restarting: false,
            healthy: true,
            restarts: 0,
            exits_since: 0,
            oom_since: false,
            last_exit: None,
            recorded: None,
        });
        track.deployment = deployment;
        match signal {
            Signal::Died { exit_code, restarting } => {
                track.running = false;
                track.restarting = restarting;
                track.exits_since += 1;
                track.last_exit = exit_code.or(track.last_exit);
                track.recent_exits.push_back(at);
            }
            // Docker reports `oom` just before the `die` it causes: the die records both.
            Signal::OomKilled => {
                track.oom_since = true;
                return None;
            }
            Signal::Started => {
                if !track.running {
                    track.restarts += 1;
                }
                track.running = true;
                track.restarting = false;
                track.healthy = true;
            }
            Signal::Health { healthy } => track.healthy = healthy,
        }
        let limits = self.limits;
        due(container, track, &limits, at)
    }

    /// The records held back that are due at `now`.
    pub fn flush(&mut self, now: DateTime<Utc>) -> Vec<ContainerSupervised> {
        let limits = self.limits;
        self.tracks.iter_mut().filter_map(|(name, track)| due(name, track, &limits, now)).collect()
    }

    /// Stops watching containers for which `keep` says no (no longer serving).
    pub fn retain(&mut self, mut keep: impl FnMut(&str, Uuid) -> bool) {
        self.tracks.retain(|name, t| keep(name, t.deployment));
    }
}

fn state(track: &mut Track, limits: &Limits, now: DateTime<Utc>) -> LiveState {
    while track.recent_exits.front().is_some_and(|at| now - *at > limits.loop_window) {
        track.recent_exits.pop_front();
    }
    if track.recent_exits.len() >= limits.loop_exits {
        LiveState::CrashLooping
    } else if !track.running && track.restarting {
        LiveState::Restarting
    } else if !track.running {
        LiveState::Down
    } else if !track.healthy {
        LiveState::Unhealthy
    } else {
        LiveState::Running
    }
}

fn due(container: &str, track: &mut Track, limits: &Limits, now: DateTime<Utc>) -> Option<ContainerSupervised> {
    let state = state(track, limits, now);
    let news = track.exits_since > 0 || track.oom_since;
    let due = match track.recorded {
        None => true,
        Some((at, recorded)) if recorded != state => now - at >= limits.min_interval,
        Some((at, _)) => news && now - at >= limits.repeat_interval,
    };
    if !due {
        return None;
    }
    let record = ContainerSupervised {
        deployment_id: track.deployment,
        container: container.to_string(),
        state,
        exits: track.exits_since,
        restarts: track.restarts,
        last_exit: track.last_exit,
        oom: track.oom_since,
        host: String::new(),
    };
    track.recorded = Some((now, state));
    track.exits_since = 0;
    track.oom_since = false;
    Some(record)
}
