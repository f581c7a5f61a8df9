//! `slipway notifications add|list|remove|deliveries|redeliver|replay`:
//! who hears about deployments, and what was sent them. Recorded straight
//! in the store like the other server-side verbs; the server's notifier
//! sends (`slipway_engine::notifier`).

use std::process::ExitCode;

use clap::Subcommand;
use slipway_engine::notifier::{self, NewSubscription};
use slipway_proto::event::{DeliveryOutcome, LogPosition, NotificationKind, NotificationTarget};
use slipway_store::EventStore;
use uuid::Uuid;

use crate::actor;
use crate::exit;

#[derive(Subcommand)]
pub enum NotificationsCmd {
    /// Send notifications to URL: `webhook` (Slipway's JSON, signed with
    /// HMAC-SHA256 over "<timestamp>.<body>" in X-Slipway-Signature, the
    /// timestamp in X-Slipway-Timestamp; the secret is printed once),
    /// `slack` or `discord` (their incoming webhooks). A Slack or Discord
    /// URL is a credential: give `-` to read it from standard input, or
    /// `@FILE`. It is kept sealed with the settings and shown as its host only.
    Add {
        #[arg(long, default_value = "webhook")]
        target: NotificationTarget,
        url: String,
        /// Only this project's events (default: every project's, and certificates').
        #[arg(long)]
        project: Option<String>,
        /// Only these kinds (repeat, or comma-separated; default: all):
        /// deployment.started, deployment.succeeded, deployment.failed,
        /// deployment.rolled_back, release.crash_looping, certificate.renewal_failed,
        /// deployment.awaiting_approval, deployment.approved, deployment.rejected, freeze.overridden.
        #[arg(long = "kind", value_delimiter = ',')]
        kinds: Vec<NotificationKind>,
    },
    /// The subscriptions: id, target, host, project and kinds.
    List,
    /// Stop sending to a subscription.
    Remove { id: Uuid },
    /// Delivery attempts, oldest first (of one subscription, when given):
    /// status, latency, and what follows (delivered, a retry at a time, gave up).
    Deliveries { subscription: Option<Uuid> },
    /// Send the notification of a delivery attempt (its id, from
    /// `deliveries`) once more.
    Redeliver { attempt: Uuid },
    /// Send a subscription every matching event after a log position
    /// again, in order (TX:SEQ, as `deliveries` shows them).
    Replay {
        id: Uuid,
        #[arg(long, value_name = "TX:SEQ")]
        from: LogPosition,
    },
}

pub async fn run(store: &dyn EventStore, cmd: NotificationsCmd, json: bool) -> anyhow::Result<ExitCode> {
    let actor = actor::actor();
    match cmd {
        NotificationsCmd::Add { target, url, project, kinds } => {
            let url = read_url(&url)?;
            let new = NewSubscription { project, kinds, target, url };
            let subscribed = notifier::subscribe(store, &actor, new).await?.map_err(refusal)?;
            if json {
                let answer = serde_json::json!({ "id": subscribed.id, "url": subscribed.url_shown, "secret": subscribed.secret });
                println!("{answer}");
            } else {
                println!("subscription {}: {target} to {}", subscribed.id, subscribed.url_shown);
                if let Some(secret) = subscribed.secret {
                    println!("signing secret (shown this once): {secret}");
                }
            }
        }
        NotificationsCmd::List => {
            let subscriptions = notifier::subscriptions(store).await?;
            if json {
                let list: Vec<_> = subscriptions
                    .values()
                    .map(|s| {
                        let sub = &s.subscribed;
                        serde_json::json!({ "id": sub.id, "target": sub.target, "url": sub.url_shown, "project": sub.project,
                            "kinds": sub.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>(), "since": s.since.to_string() })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if subscriptions.is_empty() {
                eprintln!("no notification subscription; add one with `slipway notifications add URL`");
            }
            for s in subscriptions.values().filter(|_| !json) {
                let sub = &s.subscribed;
                let kinds = if sub.kinds.is_empty() {
                    "every kind".to_string()
                } else {
                    sub.kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(",")
                };
                let project = sub.project.as_deref().unwrap_or("every project");
                println!("{}  {:<8} {:<32} {project:<16} {kinds}", sub.id, sub.target.as_str(), sub.url_shown);
            }
        }
        NotificationsCmd::Remove { id } => {
            notifier::unsubscribe(store, &actor, id).await?.map_err(refusal)?;
            println!("subscription {id} removed: nothing more is sent to it");
        }
        NotificationsCmd::Deliveries { subscription } => {
            let attempts = notifier::deliveries(store, subscription).await?.map_err(refusal)?;
            if json {
                let list: Vec<_> = attempts
                    .iter()
                    .map(|a| serde_json::json!({ "id": a.id, "subscription": a.subscription, "attempt": a.attempt }))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if attempts.is_empty() {
                eprintln!("no delivery attempt yet");
            }
            for a in attempts.iter().filter(|_| !json) {
                let t = &a.attempt;
                let outcome = match &t.outcome {
                    DeliveryOutcome::Delivered => "delivered".to_string(),
                    DeliveryOutcome::Retry { next_at } => format!("retry at {}", next_at.format("%Y-%m-%dT%H:%M:%SZ")),
                    DeliveryOutcome::GaveUp => "gave up".to_string(),
                };
                let status = t.status.map_or("-".to_string(), |s| s.to_string());
                let redelivery = if t.redelivery { " (redelivery)" } else { "" };
                println!(
                    "{}  {}  {:<28} at {:<14} #{} {status:>3} {:>5} ms  {outcome}{redelivery}{}",
                    a.id,
                    t.at.format("%Y-%m-%dT%H:%M:%SZ"),
                    t.event.kind.as_str(),
                    t.event.position.to_string(),
                    t.attempt,
                    t.latency_ms,
                    t.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
                );
            }
        }
        NotificationsCmd::Redeliver { attempt } => {
            let subscription = notifier::redeliver(store, &actor, attempt).await?.map_err(refusal)?;
            println!("redelivery asked of subscription {subscription}; the server's notifier sends it");
        }
        NotificationsCmd::Replay { id, from } => {
            notifier::replay(store, &actor, id, from).await?.map_err(refusal)?;
            println!("subscription {id}: every matching event after {from} is sent again, in order");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The URL as given, or read from standard input (`-`) or a file (`@FILE`).
fn read_url(arg: &str) -> anyhow::Result<String> {
    let text = if arg == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::read_to_string(path).map_err(|e| exit::usage(format!("reading the URL from {path}: {e}")))?
    } else {
        return Ok(arg.to_string());
    };
    Ok(text.trim().to_string())
}

fn refusal(refused: slipway_engine::rejection::Rejection) -> anyhow::Error {
    exit::rejected(refused)
}
