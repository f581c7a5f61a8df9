//! The resource limits a release runs under, read from the `slipway.toml`
//! recorded with its checkout: what `status` (the API, the local CLI and the
//! `--server` CLI) shows, so all three say the same thing in the same words.
//! Pure: the recorded config in, a value and its text out.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use slipway_proto::config::{AppConfig, Limits};

/// The web's limits and each process type's, as recorded. No limit set is
/// an empty object (`{}`): Docker's default, no limit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseLimits {
    pub web: Limits,
    #[serde(default)]
    pub processes: BTreeMap<String, Limits>,
}

/// The limits in a deployment's recorded config; an unreadable config
/// (which no deployment that ran can have) reads as no limits.
pub fn release_limits(config: &serde_json::Value) -> ReleaseLimits {
    let Ok(config) = AppConfig::from_value(config) else { return ReleaseLimits::default() };
    ReleaseLimits { web: config.web.limits(), processes: config.processes.iter().map(|(name, p)| (name.clone(), p.limits())).collect() }
}

/// "web memory 256m, cpus 0.5, pids 100; worker memory 1g".
impl fmt::Display for ReleaseLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = std::iter::once(("web", &self.web))
            .chain(self.processes.iter().map(|(name, l)| (name.as_str(), l)))
            .map(|(name, l)| format!("{name} {}", one(l)))
            .collect();
        f.write_str(&parts.join("; "))
    }
}

fn one(l: &Limits) -> String {
    if l.is_empty() {
        return "no limits".into();
    }
    let mut parts = Vec::new();
    if let Some(m) = l.memory {
        parts.push(format!("memory {}", m.human()));
    }
    if let Some(c) = l.cpus {
        parts.push(format!("cpus {}", c.human()));
    }
    if let Some(p) = l.pids {
        parts.push(format!("pids {p}"));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(toml: &str) -> serde_json::Value {
        AppConfig::parse(toml, "slipway.toml").expect("valid").to_value()
    }

    #[test]
    fn limits_are_read_from_the_recorded_config_and_told_in_one_line() {
        let limits = release_limits(&recorded(
            "[web]\nmemory = \"256m\"\ncpus = 0.5\npids = 100\n\
             [processes.worker]\ncommand = [\"w\"]\nmemory = \"1g\"\n\
             [processes.clock]\ncommand = [\"c\"]\n",
        ));
        assert_eq!(limits.to_string(), "web memory 256m, cpus 0.5, pids 100; clock no limits; worker memory 1g");
        let json = serde_json::to_value(&limits).expect("json");
        assert_eq!(
            json,
            serde_json::json!({
                "web": { "memory": "256m", "cpus": "0.5", "pids": 100 },
                "processes": { "clock": {}, "worker": { "memory": "1g" } },
            })
        );
        assert_eq!(serde_json::from_value::<ReleaseLimits>(json).expect("read back"), limits);
    }

    #[test]
    fn no_config_means_no_limits() {
        let none = release_limits(&serde_json::Value::Null);
        assert_eq!(none, ReleaseLimits::default());
        assert_eq!(none.to_string(), "web no limits");
    }
}
