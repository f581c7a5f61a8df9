//! Names that cannot collide. A (project, environment) pair is known by
//! its combined name `<project>-<environment>`: its environment stream,
//! its host name and its containers' names are made from it. Project
//! `shop` with environment `eu-live` and project `shop-eu` with `live`
//! would share all three, and deploying one would retire the other's
//! containers. So each pair claims its combined name when it is created
//! (`NameClaimed` on `name-<combined>`, appended only if that stream is
//! new, in the creation's own transaction), and a pair whose name is taken
//! is refused, naming the pair that has it. Pairs created before claims
//! existed are found through the projects that could hold the name, so
//! existing logs keep working unchanged and no event is edited.

use slipway_proto::event::{name_stream, NameClaimed};
use slipway_proto::Event;
use slipway_store::{EventStore, StoreError};

/// The name a pair's stream, host and containers are made from.
pub fn combined(project: &str, environment: &str) -> String {
    format!("{project}-{environment}")
}

/// The pair that holds `project`-`environment`'s combined name, if it is
/// another pair: by its claim, or (for pairs created before claims) by the
/// projects themselves: only the pairs that split the combined name at one
/// of its dashes can share it, so at most a few projects are read, however
/// many there are.
pub async fn taken_by(store: &dyn EventStore, project: &str, environment: &str) -> Result<Option<(String, String)>, StoreError> {
    let claim = store.read_stream(&name_stream(project, environment), 1).await?;
    if let Some(Ok(Event::NameClaimed(c))) = claim.first().map(|r| r.envelope.decode::<Event>()) {
        return Ok(other(project, environment, c.project, c.environment));
    }
    for (q, e) in splits(&combined(project, environment)) {
        if (q.as_str(), e.as_str()) == (project, environment) {
            continue;
        }
        if crate::requests::load_project(store, &q).await?.is_some_and(|p| p.environments.contains_key(&e)) {
            return Ok(Some((q, e)));
        }
    }
    Ok(None)
}

/// Every (project, environment) pair whose combined name is `name`.
fn splits(name: &str) -> Vec<(String, String)> {
    name.match_indices('-').map(|(i, _)| (name[..i].to_string(), name[i + 1..].to_string())).collect()
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
        let pair = |p: &str, e: &str| (p.to_string(), e.to_string());
        assert_eq!(splits("shop-eu-live"), [pair("shop", "eu-live"), pair("shop-eu", "live")]);
        assert_ne!(combined("shop", "live"), combined("shop", "test"));
        let message = collision("shop-eu", "live", &("shop".into(), "eu-live".into()));
        assert!(message.contains("`shop-eu-live`") && message.contains("project `shop` environment `eu-live`"), "{message}");
    }
}
