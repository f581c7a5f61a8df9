//! Names that cannot collide: project `shop` with environment `eu-live`
//! and project `shop-eu` with `live` would share the combined name
//! `shop-eu-live` (the environment stream, the host name, the containers),
//! so the second is refused, naming the first; also when the first was
//! created before names were claimed (found through the read models), and
//! when both are created at once. On SQLite and PostgreSQL.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

#[macro_use]
mod common;

use common::*;
use slipway_engine::requests::{self, NewProject};
use slipway_proto::envelope::Metadata;
use slipway_proto::event::{name_stream, project_stream, ProjectCreated};
use slipway_proto::{Envelope, Event};
use slipway_store::ExpectedVersion;
use uuid::Uuid;

fn new(name: &str, environments: &[&str]) -> NewProject {
    NewProject {
        name: name.into(),
        repository: "file:///srv/app".into(),
        default_branch: "main".into(),
        environments: environments.iter().map(|e| e.to_string()).collect(),
        mirror_of: None,
    }
}

on_both_stores!(a_pair_whose_combined_name_is_taken_is_refused_naming_the_holder);
async fn a_pair_whose_combined_name_is_taken_is_refused_naming_the_holder(s: &Setup) {
    let store = &*s.store;
    requests::create_project(store, "test", new("shop", &["eu-live", "test"])).await.unwrap().unwrap();
    let refused = requests::create_project(store, "test", new("shop-eu", &["live"])).await.unwrap().unwrap_err().to_string();
    assert!(refused.contains("`shop-eu-live`") && refused.contains("project `shop` environment `eu-live`"), "{refused}");
    assert!(requests::load_project(store, "shop-eu").await.unwrap().is_none(), "nothing of it was recorded");
    assert_eq!(store.stream_version(&name_stream("shop", "eu-live")).await.unwrap(), 1);
    // Pairs that do not collide are fine, and the holder can be created only once.
    requests::create_project(store, "test", new("shop-eu", &["test"])).await.unwrap().unwrap();
    let twice = requests::create_project(store, "test", new("shop", &["other"])).await.unwrap().unwrap_err().to_string();
    assert!(twice.contains("already exists"), "{twice}");
}

on_both_stores!(a_pair_created_before_names_were_claimed_still_holds_its_name);
async fn a_pair_created_before_names_were_claimed_still_holds_its_name(s: &Setup) {
    let store = &*s.store;
    // As an older Slipway recorded it: the project, no claim.
    let created = Event::ProjectCreated(ProjectCreated {
        name: "shop".into(),
        repository: "file:///srv/app".into(),
        mirror_of: None,
        environments: vec!["eu-live".into()],
        default_branch: "main".into(),
    });
    let meta = Metadata { correlation_id: Uuid::now_v7(), causation_id: None, actor: "test".into(), trace: None };
    let stream = project_stream("shop");
    let e = Envelope::new(Uuid::now_v7(), chrono::Utc::now(), &stream, &created, meta).unwrap();
    store.append(&stream, ExpectedVersion::NoStream, &[e], &[]).await.unwrap().unwrap();
    let refused = requests::create_project(store, "test", new("shop-eu", &["live"])).await.unwrap().unwrap_err().to_string();
    assert!(refused.contains("project `shop` environment `eu-live`"), "{refused}");
}

on_both_stores!(two_colliding_pairs_created_at_once_land_one);
async fn two_colliding_pairs_created_at_once_land_one(s: &Setup) {
    let store = &*s.store;
    let (a, b) = tokio::join!(
        requests::create_project(store, "test", new("shop", &["eu-live"])),
        requests::create_project(store, "test", new("shop-eu", &["live"])),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.is_ok() != b.is_ok(), "exactly one lands: {a:?} {b:?}");
    let refused = a.err().or(b.err()).unwrap().to_string();
    assert!(refused.contains("`shop-eu-live`"), "{refused}");
}
