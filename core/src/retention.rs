//! Image retention: which images Slipway built may go. Pure: given every
//! environment's releases (oldest first, each with its image) and the
//! images Slipway built, it keeps the images of the last `keep` releases of
//! every environment — what rollback can go back to, what serves now, and
//! so what a mirror or a promoted environment still uses — and offers the
//! rest for removal.

use std::collections::{BTreeMap, BTreeSet};

/// One environment's releases, oldest first, as image ids.
pub type Releases = Vec<String>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub keep: BTreeSet<String>,
    /// Built by Slipway and needed by no kept release.
    pub remove: BTreeSet<String>,
}

/// `environments`: (project, environment) -> its releases' images, oldest
/// first; `built`: every image a build recorded.
pub fn plan(environments: &BTreeMap<(String, String), Releases>, built: &BTreeSet<String>, keep: usize) -> Plan {
    let keep_set: BTreeSet<String> = environments.values().flat_map(|images| images.iter().rev().take(keep.max(1)).cloned()).collect();
    let remove = built.difference(&keep_set).cloned().collect();
    Plan { keep: keep_set, remove }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envs(list: &[(&str, &str, &[&str])]) -> BTreeMap<(String, String), Releases> {
        list.iter().map(|(p, e, images)| ((p.to_string(), e.to_string()), images.iter().map(|i| i.to_string()).collect())).collect()
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|i| i.to_string()).collect()
    }

    #[test]
    fn the_last_releases_of_every_environment_are_kept_and_older_builds_go() {
        let e = envs(&[("shop", "test", &["a", "b", "c", "d"]), ("shop", "live", &["a", "b"]), ("shop-eu", "live", &["a"])]);
        let p = plan(&e, &set(&["a", "b", "c", "d", "failed-build"]), 2);
        // test keeps c, d; live keeps a, b (live and the mirror still use a).
        assert_eq!(p.keep, set(&["a", "b", "c", "d"]));
        assert_eq!(p.remove, set(&["failed-build"]));
        let p = plan(&e, &set(&["a", "b", "c", "d"]), 1);
        assert_eq!(p.keep, set(&["a", "b", "d"]), "what serves is always kept");
        assert_eq!(p.remove, set(&["c"]));
    }

    #[test]
    fn keep_zero_still_keeps_what_serves() {
        let p = plan(&envs(&[("p", "live", &["x", "y"])]), &set(&["x", "y"]), 0);
        assert_eq!((p.keep, p.remove), (set(&["y"]), set(&["x"])));
    }
}
