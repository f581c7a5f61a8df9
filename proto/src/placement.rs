//! Swarm placement constraints (`[web] hosts`), read the way Swarm reads them, so that a
//! drain can be refused before it strands a release: `[web] hosts` is a
//! list of `ATTRIBUTE==VALUE` or `ATTRIBUTE!=VALUE`, all of which a node
//! must satisfy. Pure: the node's facts come from the caller.
//!
//! `form_problem` checks a constraint's form when `slipway.toml` is read
//! (Swarm would refuse it only when the service is created, after the
//! build). `satisfies` answers `None` for an attribute it does not know,
//! and callers then assume the node may qualify: a wrong "no node
//! qualifies" would refuse a drain Swarm could have done.

use std::collections::BTreeMap;

/// What Swarm's constraints can name about a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeFacts {
    pub id: String,
    pub hostname: String,
    /// `manager` or `worker`.
    pub role: String,
    pub os: String,
    pub arch: String,
    pub labels: BTreeMap<String, String>,
    pub engine_labels: BTreeMap<String, String>,
}

/// Why `constraint` is not of Swarm's form, if it is not.
pub fn form_problem(constraint: &str) -> Option<String> {
    let Some((attribute, _, value)) = split(constraint) else {
        return Some(format!(
            "`{constraint}` is not a placement constraint: expected ATTRIBUTE==VALUE or ATTRIBUTE!=VALUE, such as node.labels.region==eu"
        ));
    };
    if attribute.is_empty() || value.is_empty() {
        return Some(format!("`{constraint}` names no attribute or no value: expected ATTRIBUTE==VALUE, such as node.labels.region==eu"));
    }
    value_of(&NodeFacts::default(), &attribute).is_none().then(|| {
        format!(
            "`{constraint}`: Swarm knows no attribute `{attribute}`; use node.id, node.hostname, node.role, \
             node.platform.os, node.platform.arch, node.labels.NAME or engine.labels.NAME"
        )
    })
}

/// Whether `node` satisfies every one of `constraints`; `None` when one
/// names what this does not know.
pub fn satisfies(node: &NodeFacts, constraints: &[String]) -> Option<bool> {
    let mut all = true;
    for c in constraints {
        let (attribute, equal, value) = split(c)?;
        let actual = value_of(node, &attribute)?;
        // A label the node lacks equals nothing (and differs from anything).
        let same = actual.is_some_and(|a| a.eq_ignore_ascii_case(&value));
        all &= same == equal;
    }
    Some(all)
}

/// What `attribute` (lowercase) is on `node`: `None` for an attribute
/// Swarm does not have, `Some(None)` for a label the node lacks.
fn value_of<'a>(node: &'a NodeFacts, attribute: &str) -> Option<Option<&'a str>> {
    let label = |labels: &'a BTreeMap<String, String>, key: &str| labels.get(key).map(String::as_str);
    Some(match attribute {
        "node.id" => Some(node.id.as_str()),
        "node.hostname" => Some(node.hostname.as_str()),
        "node.role" => Some(node.role.as_str()),
        "node.platform.os" => Some(node.os.as_str()),
        "node.platform.arch" => Some(node.arch.as_str()),
        a => match (a.strip_prefix("node.labels."), a.strip_prefix("engine.labels.")) {
            (Some(key), _) if !key.is_empty() => label(&node.labels, key),
            (_, Some(key)) if !key.is_empty() => label(&node.engine_labels, key),
            _ => return None,
        },
    })
}

/// `(attribute, is ==, value)`, trimmed; attributes compared lowercase.
fn split(constraint: &str) -> Option<(String, bool, String)> {
    let (at, equal, len) = match (constraint.find("!="), constraint.find("==")) {
        (Some(i), _) => (i, false, 2),
        (None, Some(i)) => (i, true, 2),
        _ => return None,
    };
    let attribute = constraint[..at].trim().to_ascii_lowercase();
    let value = constraint[at + len..].trim().to_string();
    Some((attribute, equal, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(hostname: &str, labels: &[(&str, &str)]) -> NodeFacts {
        NodeFacts {
            id: format!("{hostname}-id"),
            hostname: hostname.into(),
            role: "worker".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            engine_labels: BTreeMap::new(),
        }
    }

    #[test]
    fn a_node_satisfies_every_constraint_or_not() {
        let eu = node("a", &[("region", "eu")]);
        let bare = node("b", &[]);
        let c = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(satisfies(&eu, &c(&["node.labels.region==eu"])), Some(true));
        assert_eq!(satisfies(&bare, &c(&["node.labels.region==eu"])), Some(false));
        assert_eq!(satisfies(&bare, &c(&["node.labels.region!=eu"])), Some(true), "a missing label differs");
        assert_eq!(satisfies(&eu, &c(&["node.labels.region==eu", "node.role==manager"])), Some(false));
        assert_eq!(satisfies(&eu, &c(&["node.hostname != b", "node.platform.os==linux"])), Some(true));
        assert_eq!(satisfies(&eu, &c(&[])), Some(true));
        assert_eq!(satisfies(&eu, &c(&["node.ip==10.0.0.1"])), None, "unknown: the caller assumes it may qualify");
    }

    #[test]
    fn a_constraint_of_the_wrong_form_says_what_is_expected() {
        assert_eq!(form_problem("node.labels.region==eu"), None);
        assert_eq!(form_problem("engine.labels.disk != hdd"), None);
        assert!(form_problem("region=eu").unwrap().contains("expected ATTRIBUTE==VALUE"));
        assert!(form_problem("node.labels.region==").unwrap().contains("no value"));
        assert!(form_problem("").unwrap().contains("not a placement constraint"));
        assert!(form_problem("node.colour==red").unwrap().contains("no attribute `node.colour`"));
    }
}
