//! Names that cannot collide. A (project, environment) pair is known by
//! its combined name `<project>-<environment>`: its environment stream,
//! its host name and its containers' names are made from it. Project
//! `shop` with environment `eu-live` and project `shop-eu` with `live`
//! would share all three, and deploying one would retire the other's
//! containers. So each pair claims its combined name when it is created
//! (`NameClaimed` on `name-<combined>`, appended only if that stream is
//! new, in the creation's own transaction), and a pair whose name is taken
//! is refused, naming the pair that has it. Pairs created before claims
//! existed are found through the environments read model, so existing
//! logs keep working unchanged and no event is edited.

use slipway_proto::event::{name_stream, NameClaimed};
use slipway_proto::Event;
use slipway_store::{EventStore, StoreError};

/// The name a pair's stream, host and containers are made from.
pub fn combined(project: &str, environment: &str) -> String {
    format!("{project}-{environment}")
}

/// The pair that holds `project`-`environment`'s combined name, if it is
/// another pair: by its claim, or (for pairs created before claims) by the
/// environments read model.
pub async fn taken_by(store: &dyn EventStore, project: &str, environment: &str) -> Result<Option<(String, String)>, StoreError> {
    let claim = store.read_stream(&name_stream(project, environment), 1).await?;
    if let Some(Ok(Event::NameClaimed(c))) = claim.first().map(|r| r.envelope.decode::<Event>()) {
        return Ok(other(project, environment, c.project, c.environment));
    }
    crate::projector::catch_up(store).await?;
    let wanted = combined(project, environment);
    let rows = store.read_models().environments().await?;
    Ok(rows
        .into_iter()
        .find(|r| combined(&r.project, &r.environment) == wanted && (r.project != project || r.environment != environment))
        .map(|r| (r.project, r.environment)))
}

fn other(project: &str, environment: &str, p: String, e: String) -> Option<(String, String)> {
    (p != project || e != environment).then_some((p, e))
}

/// The claim to append (at `ExpectedVersion::NoStream`) with a pair's creation.
pub fn claim(project: &str, environment: &str) -> Event {
    Event::NameClaimed(NameClaimed { project: project.into(), environment: environment.into() })
}

/// Why a pair cannot be created.
pub fn collision(project: &str, environment: &str, holder: &(String, String)) -> String {
    format!(
        "project `{project}` environment `{environment}` would be named `{}`, which project `{}` environment `{}` already has \
         (streams, host names and containers are named from it); choose another project or environment name",
        combined(project, environment),
        holder.0,
        holder.1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pairs_of_the_issue_share_a_combined_name() {
        assert_eq!(combined("shop", "eu-live"), combined("shop-eu", "live"));
        assert_ne!(combined("shop", "live"), combined("shop", "test"));
        let message = collision("shop-eu", "live", &("shop".into(), "eu-live".into()));
        assert!(message.contains("`shop-eu-live`") && message.contains("project `shop` environment `eu-live`"), "{message}");
    }
}
