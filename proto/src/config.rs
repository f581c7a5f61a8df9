//! The app's own configuration, `slipway.toml` at the repository root: what
//! the web container listens on and how to check it, the backing services
//! that must answer before anything is built, the release commands, and the
//! extra process types. Every section is optional; an unknown key, a wrong
//! type or a bad value is an error naming the file, the key and what is
//! expected. The parsed form is recorded (as JSON) with the checkout, so a
//! replay runs with the configuration as it was at that commit.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const FILE_NAME: &str = "slipway.toml";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    #[serde(default)]
    pub web: WebConfig,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
    #[serde(default)]
    pub release: ReleaseConfig,
    #[serde(default)]
    pub processes: BTreeMap<String, ProcessConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// The port the app listens on inside the container.
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_health_path")]
    pub health_path: String,
    #[serde(default = "default_health_timeout")]
    pub health_timeout: Interval,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig { port: default_port(), health_path: default_health_path(), health_timeout: default_health_timeout() }
    }
}

fn default_port() -> u16 {
    80
}
fn default_health_path() -> String {
    "/".into()
}
fn default_health_timeout() -> Interval {
    Interval(Duration::from_secs(60))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// Connect and run `SELECT 1`; the setting holds a postgres:// URL.
    Postgres,
    /// Open a TCP connection; the setting holds HOST:PORT.
    Tcp,
    /// GET answers (any status below 500); the setting holds an http:// URL.
    Http,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    #[serde(rename = "type")]
    pub kind: ServiceKind,
    /// The environment setting that holds the service's address.
    pub env: String,
    #[serde(default = "default_service_timeout")]
    pub timeout: Interval,
}

fn default_service_timeout() -> Interval {
    Interval(Duration::from_secs(5))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseConfig {
    /// Run in order, each in a one-off container of the new image.
    #[serde(default)]
    pub commands: Vec<String>,
    /// Per command.
    #[serde(default = "default_release_timeout")]
    pub timeout: Interval,
}

impl Default for ReleaseConfig {
    fn default() -> Self {
        ReleaseConfig { commands: Vec::new(), timeout: default_release_timeout() }
    }
}

fn default_release_timeout() -> Interval {
    Interval(Duration::from_secs(600))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessConfig {
    pub command: Vec<String>,
    #[serde(default = "default_replicas")]
    pub replicas: u32,
}

fn default_replicas() -> u32 {
    1
}

/// A duration written as "500ms", "60s", "5m" or "1h" (or a number of seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interval(pub Duration);

impl Interval {
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let n: u64 = number.parse().map_err(|_| format!("`{text}` is not a duration like \"500ms\", \"60s\", \"5m\""))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "" | "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            other => return Err(format!("unknown unit `{other}` in `{text}`; use ms, s, m or h")),
        };
        Ok(Interval(d))
    }
}

impl Serialize for Interval {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", self.0.as_millis()))
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|_| serde::de::Error::custom("expected a duration like \"60s\""))? {
            Raw::Seconds(n) => Ok(Interval(Duration::from_secs(n))),
            Raw::Text(t) => Interval::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// A bad `slipway.toml`: which file, which key, what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}: {expected}")]
pub struct ConfigError {
    pub file: String,
    /// Dotted path to the key, or "(document)" for a syntax error.
    pub key: String,
    pub expected: String,
}

/// True for a DNS label: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'.
/// Project, environment and process names become container and host names.
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// True for a portable environment variable name.
pub fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl AppConfig {
    /// Parses and validates `text`, read from `file` (named in errors).
    pub fn parse(text: &str, file: &str) -> Result<AppConfig, ConfigError> {
        let err = |key: &str, expected: String| ConfigError { file: file.into(), key: key.into(), expected };
        let de = toml::Deserializer::new(text);
        let config: AppConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().trim().to_string();
            let at = inner
                .span()
                .map(|span| {
                    let line = text[..span.start.min(text.len())].lines().count().max(1);
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            err(if key == "." { "(document)" } else { &key }, format!("{message}{at}"))
        })?;
        if config.web.port == 0 {
            return Err(err("web.port", "expected a port between 1 and 65535, found 0".into()));
        }
        if !config.web.health_path.starts_with('/') {
            return Err(err("web.health_path", format!("expected a path starting with `/`, found `{}`", config.web.health_path)));
        }
        if config.web.health_timeout.0.is_zero() {
            return Err(err("web.health_timeout", "expected a duration above zero".into()));
        }
        for (name, service) in &config.services {
            if !is_env_name(&service.env) {
                return Err(err(&format!("services.{name}.env"), format!("expected an environment variable name, found `{}`", service.env)));
            }
        }
        for (i, command) in config.release.commands.iter().enumerate() {
            if command.trim().is_empty() {
                return Err(err(&format!("release.commands[{i}]"), "expected a command, found an empty string".into()));
            }
        }
        for (name, process) in &config.processes {
            if !is_dns_label(name) || name == "web" {
                return Err(err(
                    &format!("processes.{name}"),
                    "expected a process name of lowercase letters, digits and '-' (and not `web`)".into(),
                ));
            }
            if process.command.is_empty() || process.command[0].trim().is_empty() {
                return Err(err(&format!("processes.{name}.command"), "expected a non-empty list like [\"python3\", \"worker.py\"]".into()));
            }
            if !(1..=20).contains(&process.replicas) {
                return Err(err(&format!("processes.{name}.replicas"), format!("expected 1 to 20, found {}", process.replicas)));
            }
        }
        Ok(config)
    }

    /// The recorded (JSON) form, as carried in `CheckedOut` and commands.
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }

    pub fn from_value(value: &serde_json::Value) -> Result<AppConfig, String> {
        if value.is_null() {
            return Ok(AppConfig::default());
        }
        serde_json::from_value(value.clone()).map_err(|e| format!("recorded slipway.toml is unreadable: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AppConfig, ConfigError> {
        AppConfig::parse(text, "repo/slipway.toml")
    }

    #[test]
    fn the_design_example_parses() {
        let c = parse(
            r#"
[web]
port = 80                  # port the app listens on inside the container
health_path = "/healthz"   # default "/"
health_timeout = "60s"

[services]                 # must be reachable before the build starts
database = { type = "postgres", env = "DATABASE_URL" }   # also: tcp, http

[release]
commands = ["python3 manage.py migrate"]  # in order, one-off containers

[processes.worker]
command = ["python3", "worker.py"]
replicas = 1
"#,
        )
        .unwrap();
        assert_eq!(c.web.health_path, "/healthz");
        assert_eq!(c.web.health_timeout, Interval(Duration::from_secs(60)));
        assert_eq!(c.services["database"].kind, ServiceKind::Postgres);
        assert_eq!(c.release.commands, vec!["python3 manage.py migrate"]);
        assert_eq!(c.processes["worker"].replicas, 1);
        assert_eq!(AppConfig::from_value(&c.to_value()).unwrap(), c);
    }

    #[test]
    fn every_section_is_optional() {
        let c = parse("").unwrap();
        assert_eq!(c, AppConfig::default());
        assert_eq!((c.web.port, c.web.health_path.as_str()), (80, "/"));
    }

    #[track_caller]
    fn rejects(text: &str, key: &str, needle: &str) {
        let e = parse(text).unwrap_err();
        assert_eq!(e.file, "repo/slipway.toml");
        assert_eq!(e.key, key, "{e}");
        assert!(e.to_string().contains(needle), "`{e}` lacks `{needle}`");
    }

    #[test]
    fn unknown_keys_are_named() {
        rejects("[web]\nprot = 80\n", "web.prot", "unknown field `prot`, expected one of `port`");
        rejects("[deploy]\nx = 1\n", "deploy", "unknown field `deploy`");
        rejects("[processes.worker]\ncommand = [\"a\"]\nreplica = 2\n", "processes.worker.replica", "unknown field `replica`");
    }

    #[test]
    fn wrong_types_are_named() {
        rejects("[web]\nport = \"eighty\"\n", "web.port", "expected u16");
        rejects("[web]\nport = 70000\n", "web.port", "u16");
        rejects("[release]\ncommands = \"migrate\"\n", "release.commands", "expected a sequence");
        rejects("[services]\ndb = { type = \"mysql\", env = \"DB\" }\n", "services.db.type", "unknown variant `mysql`");
        rejects("[web]\nhealth_timeout = \"soon\"\n", "web.health_timeout", "duration");
        rejects("[web\nport = 1", "(document)", "line 1");
    }

    #[test]
    fn bad_values_are_named() {
        rejects("[web]\nport = 0\n", "web.port", "between 1 and 65535");
        rejects("[web]\nhealth_path = \"healthz\"\n", "web.health_path", "starting with `/`");
        rejects("[web]\nhealth_timeout = \"0s\"\n", "web.health_timeout", "above zero");
        rejects("[services]\ndb = { type = \"tcp\", env = \"1DB\" }\n", "services.db.env", "environment variable name");
        rejects("[release]\ncommands = [\"  \"]\n", "release.commands[0]", "empty");
        rejects("[processes.Worker]\ncommand = [\"a\"]\n", "processes.Worker", "lowercase");
        rejects("[processes.web]\ncommand = [\"a\"]\n", "processes.web", "not `web`");
        rejects("[processes.w]\ncommand = []\n", "processes.w.command", "non-empty");
        rejects("[processes.w]\ncommand = [\"a\"]\nreplicas = 0\n", "processes.w.replicas", "1 to 20");
    }

    #[test]
    fn intervals_accept_units_and_seconds() {
        assert_eq!(Interval::parse("250ms").unwrap().0, Duration::from_millis(250));
        assert_eq!(Interval::parse("2m").unwrap().0, Duration::from_secs(120));
        assert_eq!(Interval::parse("7").unwrap().0, Duration::from_secs(7));
        assert!(Interval::parse("7d").unwrap_err().contains("unknown unit"));
        assert_eq!(parse("[web]\nhealth_timeout = 5\n").unwrap().web.health_timeout.0, Duration::from_secs(5));
    }

    #[test]
    fn names_follow_dns_label_rules() {
        for ok in ["hello", "a", "my-app-2"] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "Hello", "a_b", "a.b", &"x".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }
}
