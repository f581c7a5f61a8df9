//! Stream names, typed. Every stream the log holds is named by one of a
//! few forms (`deployment-<id>`, `project-<name>`,
//! `environment-<project>-<env>`, `routes`, ...). `StreamId` is the one
//! place those forms are written (`Display`) and read back (`parse`), so
//! code that asks "whose stream is this?" matches a variant instead of a
//! prefix, and two spellings of one name cannot drift apart.
//!
//! The stored names are exactly the ones written before this type existed:
//! nothing in the log changes. That includes the one ambiguity of the old
//! encoding: an environment stream joins project and environment with a
//! dash, and both may hold dashes, so `environment-shop-eu-live` cannot be
//! split back into its pair. `parse` therefore keeps the combined name
//! (`Environment(combined)`), and names are kept from colliding where they
//! are created (each pair claims its combined name on `name-<combined>`).
//!
//! Parsing borrows: classifying a stream on a hot path allocates nothing.

use std::borrow::Cow;
use std::fmt;

use uuid::Uuid;

/// One stream's name, by what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamId<'a> {
    /// `deployment-<uuid>`: one deployment's events.
    Deployment(Uuid),
    /// `project-<name>`: a project's settings and rules.
    Project(Cow<'a, str>),
    /// `environment-<project>-<env>`: an environment's queue and releases,
    /// by its combined name `<project>-<env>` (see the module doc for why
    /// it is not split).
    Environment(Cow<'a, str>),
    /// `name-<project>-<env>`: the claim on a combined name.
    Name(Cow<'a, str>),
    /// `routes`: every environment's route; its version is the route version.
    Routes,
    /// `routers`: the registry of routers.
    Routers,
    /// `router-<id>`: one router's acknowledgements.
    Router(Cow<'a, str>),
    /// `installation`: the installation's own facts.
    Installation,
    /// `certificates`: TLS certificates and ACME challenges.
    Certificates,
    /// `tokens`: API tokens issued and revoked.
    Tokens,
    /// `notifications`: notification subscriptions.
    Notifications,
    /// `notification-<uuid>`: one subscription's deliveries.
    Notification(Uuid),
    /// A name of none of these forms (a `deployment-` name whose id is not
    /// a UUID, for one): kept as it is.
    Other(Cow<'a, str>),
}

const DEPLOYMENT: &str = "deployment-";
const PROJECT: &str = "project-";
const ENVIRONMENT: &str = "environment-";
const NAME: &str = "name-";
const ROUTER: &str = "router-";
const NOTIFICATION: &str = "notification-";

impl StreamId<'static> {
    pub fn deployment(id: Uuid) -> Self {
        StreamId::Deployment(id)
    }

    pub fn project(name: &str) -> Self {
        StreamId::Project(Cow::Owned(name.to_owned()))
    }

    pub fn environment(project: &str, environment: &str) -> Self {
        StreamId::Environment(Cow::Owned(format!("{project}-{environment}")))
    }

    pub fn name(project: &str, environment: &str) -> Self {
        StreamId::Name(Cow::Owned(format!("{project}-{environment}")))
    }

    pub fn router(id: &str) -> Self {
        StreamId::Router(Cow::Owned(id.to_owned()))
    }

    pub fn notification(subscription: Uuid) -> Self {
        StreamId::Notification(subscription)
    }
}

impl<'a> StreamId<'a> {
    /// What `stream` names. Never fails: a name of no known form is `Other`.
    pub fn parse(stream: &'a str) -> Self {
        let borrowed = Cow::Borrowed;
        match stream {
            crate::event::ROUTES_STREAM => return StreamId::Routes,
            crate::event::ROUTERS_STREAM => return StreamId::Routers,
            crate::event::INSTALLATION_STREAM => return StreamId::Installation,
            crate::event::CERTIFICATES_STREAM => return StreamId::Certificates,
            crate::event::TOKENS_STREAM => return StreamId::Tokens,
            crate::event::NOTIFICATIONS_STREAM => return StreamId::Notifications,
            _ => {}
        }
        // Only the canonical spelling (hyphenated, lowercase: what `Display`
        // writes) is an id, so every id read back is written as it was read.
        let uuid = |rest: &str| {
            let canonical = rest.len() == 36 && !rest.bytes().any(|b| b.is_ascii_uppercase());
            canonical.then(|| rest.parse::<Uuid>().ok()).flatten()
        };
        let nonempty = |rest: &'a str| (!rest.is_empty()).then(|| borrowed(rest));
        let parsed = if let Some(rest) = stream.strip_prefix(DEPLOYMENT) {
            uuid(rest).map(StreamId::Deployment)
        } else if let Some(rest) = stream.strip_prefix(NOTIFICATION) {
            uuid(rest).map(StreamId::Notification)
        } else if let Some(rest) = stream.strip_prefix(PROJECT) {
            nonempty(rest).map(StreamId::Project)
        } else if let Some(rest) = stream.strip_prefix(ENVIRONMENT) {
            nonempty(rest).map(StreamId::Environment)
        } else if let Some(rest) = stream.strip_prefix(NAME) {
            nonempty(rest).map(StreamId::Name)
        } else if let Some(rest) = stream.strip_prefix(ROUTER) {
            nonempty(rest).map(StreamId::Router)
        } else {
            None
        };
        parsed.unwrap_or(StreamId::Other(borrowed(stream)))
    }

    /// The deployment whose stream this is.
    pub fn deployment_id(&self) -> Option<Uuid> {
        match self {
            StreamId::Deployment(id) => Some(*id),
            _ => None,
        }
    }

    /// The project whose stream this is (a `project-<name>` stream only).
    pub fn project_name(&self) -> Option<&str> {
        match self {
            StreamId::Project(name) => Some(name),
            _ => None,
        }
    }

    /// Whether the routers' lease bookkeeping follows this stream: the
    /// registry or one router's acknowledgements.
    pub fn is_router(&self) -> bool {
        matches!(self, StreamId::Routers | StreamId::Router(_))
    }

    /// The same id, owning its names.
    pub fn into_owned(self) -> StreamId<'static> {
        let own = |c: Cow<'a, str>| Cow::Owned(c.into_owned());
        match self {
            StreamId::Deployment(id) => StreamId::Deployment(id),
            StreamId::Project(n) => StreamId::Project(own(n)),
            StreamId::Environment(n) => StreamId::Environment(own(n)),
            StreamId::Name(n) => StreamId::Name(own(n)),
            StreamId::Routes => StreamId::Routes,
            StreamId::Routers => StreamId::Routers,
            StreamId::Router(n) => StreamId::Router(own(n)),
            StreamId::Installation => StreamId::Installation,
            StreamId::Certificates => StreamId::Certificates,
            StreamId::Tokens => StreamId::Tokens,
            StreamId::Notifications => StreamId::Notifications,
            StreamId::Notification(id) => StreamId::Notification(id),
            StreamId::Other(n) => StreamId::Other(own(n)),
        }
    }
}

impl fmt::Display for StreamId<'_> {
    /// The stored name: exactly what was written before this type existed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamId::Deployment(id) => write!(f, "{DEPLOYMENT}{id}"),
            StreamId::Project(name) => write!(f, "{PROJECT}{name}"),
            StreamId::Environment(combined) => write!(f, "{ENVIRONMENT}{combined}"),
            StreamId::Name(combined) => write!(f, "{NAME}{combined}"),
            StreamId::Routes => f.write_str(crate::event::ROUTES_STREAM),
            StreamId::Routers => f.write_str(crate::event::ROUTERS_STREAM),
            StreamId::Router(id) => write!(f, "{ROUTER}{id}"),
            StreamId::Installation => f.write_str(crate::event::INSTALLATION_STREAM),
            StreamId::Certificates => f.write_str(crate::event::CERTIFICATES_STREAM),
            StreamId::Tokens => f.write_str(crate::event::TOKENS_STREAM),
            StreamId::Notifications => f.write_str(crate::event::NOTIFICATIONS_STREAM),
            StreamId::Notification(id) => write!(f, "{NOTIFICATION}{id}"),
            StreamId::Other(name) => f.write_str(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        deployment_stream, environment_stream, name_stream, notification_stream, project_stream, router_stream, CERTIFICATES_STREAM,
        INSTALLATION_STREAM, NOTIFICATIONS_STREAM, ROUTERS_STREAM, ROUTES_STREAM, TOKENS_STREAM,
    };

    #[track_caller]
    fn round_trip(id: StreamId<'static>, stored: &str) {
        assert_eq!(id.to_string(), stored, "written as before");
        assert_eq!(StreamId::parse(stored), id, "read back");
        assert_eq!(StreamId::parse(&id.to_string()).to_string(), stored);
    }

    #[test]
    fn every_form_is_written_as_before_and_read_back() {
        let id = Uuid::from_u128(0x0190_5c3e_aaaa_7bbb_8ccc_dddd_eeee_ffff);
        round_trip(StreamId::deployment(id), &deployment_stream(id));
        round_trip(StreamId::deployment(id), &format!("deployment-{id}"));
        round_trip(StreamId::project("shop"), &project_stream("shop"));
        round_trip(StreamId::project("shop"), "project-shop");
        round_trip(StreamId::environment("shop", "eu-live"), &environment_stream("shop", "eu-live"));
        round_trip(StreamId::environment("shop", "eu-live"), "environment-shop-eu-live");
        round_trip(StreamId::name("shop", "live"), &name_stream("shop", "live"));
        round_trip(StreamId::router("r1"), &router_stream("r1"));
        round_trip(StreamId::notification(id), &notification_stream(id));
        round_trip(StreamId::Routes, ROUTES_STREAM);
        round_trip(StreamId::Routers, ROUTERS_STREAM);
        round_trip(StreamId::Installation, INSTALLATION_STREAM);
        round_trip(StreamId::Certificates, CERTIFICATES_STREAM);
        round_trip(StreamId::Tokens, TOKENS_STREAM);
        round_trip(StreamId::Notifications, NOTIFICATIONS_STREAM);
    }

    #[test]
    fn names_of_no_known_form_are_kept_as_they_are() {
        for odd in ["deployment-not-a-uuid", "deployment-", "project-", "notification-7", "router-", "workers", "", "routes-x"] {
            assert_eq!(StreamId::parse(odd), StreamId::Other(Cow::Borrowed(odd)), "{odd}");
            assert_eq!(StreamId::parse(odd).to_string(), odd);
        }
        // Only the canonical spelling of an id is one: another would not
        // round-trip to the name it was read from.
        let upper = "deployment-01905C3E-AAAA-7BBB-8CCC-DDDDEEEEFFFF";
        assert_eq!(StreamId::parse(upper).to_string(), upper);
        assert!(matches!(StreamId::parse(upper), StreamId::Other(_)));
    }

    #[test]
    fn an_environment_stream_keeps_its_combined_name_and_pairs_that_share_it_share_the_stream() {
        // The old encoding's ambiguity, pinned: both pairs write one name.
        // `name-<combined>` claims keep a second pair from being created.
        assert_eq!(StreamId::environment("shop", "eu-live"), StreamId::environment("shop-eu", "live"));
        assert_eq!(StreamId::parse("environment-shop-eu-live"), StreamId::Environment(Cow::Borrowed("shop-eu-live")));
    }

    #[test]
    fn classification_answers_whose_stream_it_is() {
        let id = Uuid::from_u128(7);
        assert_eq!(StreamId::parse(&deployment_stream(id)).deployment_id(), Some(id));
        assert_eq!(StreamId::parse("project-shop").project_name(), Some("shop"));
        assert_eq!(StreamId::parse("environment-shop-live").project_name(), None);
        assert!(StreamId::parse("routers").is_router() && StreamId::parse("router-a").is_router());
        assert!(!StreamId::parse("routes").is_router());
        assert_eq!(StreamId::parse(&String::from("project-x")).into_owned(), StreamId::project("x"));
    }
}
