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
    /// How long the web container must keep answering healthily (with
    /// consecutive successes) before the health check passes.
    #[serde(default = "default_min_ready")]
    pub min_ready: Interval,
    /// How long the new release is watched after the traffic switch; a
    /// failure within it routes back to the old release. `0` turns it off.
    #[serde(default = "default_watch")]
    pub watch: Interval,
    /// The share of the new release's requests that may fail at the routers
    /// (5xx answers and upstream errors) during the watch before it is
    /// rolled back, once at least `ErrorRate::MIN_ERRORS` failed.
    #[serde(default, skip_serializing_if = "ErrorRate::is_default")]
    pub watch_max_error_rate: ErrorRate,
    /// Memory, CPU and process limits of the web container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Cpus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
    /// How many web containers serve the release. Only the swarm runtime
    /// runs more than one (the single engine runs one and says so).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub replicas: u32,
    /// Where the swarm runtime may place the web replicas: Swarm placement
    /// constraints, `["node.labels.region==eu"]`. The single engine runs
    /// the web on its own host, and says so.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

impl WebConfig {
    pub fn limits(&self) -> Limits {
        Limits { memory: self.memory, cpus: self.cpus, pids: self.pids }
    }
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            port: default_port(),
            health_path: default_health_path(),
            health_timeout: default_health_timeout(),
            min_ready: default_min_ready(),
            watch: default_watch(),
            watch_max_error_rate: ErrorRate::default(),
            memory: None,
            cpus: None,
            pids: None,
            replicas: 1,
            hosts: Vec::new(),
        }
    }
}

/// Resource limits of a container, applied by Docker: `memory = "256m"`,
/// `cpus = 0.5` (or `"0.5"`), `pids = 200`. None set means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Cpus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.memory.is_none() && self.cpus.is_none() && self.pids.is_none()
    }
}

/// A memory size in bytes, written "512k", "256m", "1g" (or a number of bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Memory(pub u64);

/// The smallest memory limit Docker accepts.
pub const MIN_MEMORY: u64 = 6 * 1024 * 1024;

impl Memory {
    pub fn parse(text: &str) -> Result<Self, String> {
        let expected = || format!("`{text}` is not a memory size like \"512m\" or \"1g\" (units b, k, m, g)");
        let t = text.trim().to_ascii_lowercase();
        let t = t.strip_suffix('b').filter(|r| r.ends_with(['k', 'm', 'g'])).unwrap_or(&t);
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let n: u64 = number.parse().map_err(|_| expected())?;
        let factor: u64 = match unit {
            "" | "b" => 1,
            "k" => 1 << 10,
            "m" => 1 << 20,
            "g" => 1 << 30,
            _ => return Err(expected()),
        };
        let bytes = n.checked_mul(factor).ok_or_else(expected)?;
        if bytes < MIN_MEMORY {
            return Err(format!("`{text}` is below the smallest limit Docker accepts (6m)"));
        }
        Ok(Memory(bytes))
    }

    /// "256m", "1g", "6291456b": the shortest exact form.
    pub fn human(&self) -> String {
        let b = self.0;
        if b.is_multiple_of(1 << 30) {
            format!("{}g", b >> 30)
        } else if b.is_multiple_of(1 << 20) {
            format!("{}m", b >> 20)
        } else if b.is_multiple_of(1 << 10) {
            format!("{}k", b >> 10)
        } else {
            format!("{b}b")
        }
    }
}

impl Serialize for Memory {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.human())
    }
}

impl<'de> Deserialize<'de> for Memory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|_| serde::de::Error::custom("expected a memory size like \"256m\""))? {
            Raw::Bytes(n) => Memory::parse(&n.to_string()).map_err(serde::de::Error::custom),
            Raw::Text(t) => Memory::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// A CPU quota in thousandths of a CPU ("0.5" is 500), as Docker's `--cpus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cpus(pub u32);

impl Cpus {
    pub fn parse(text: &str) -> Result<Self, String> {
        let expected = || format!("`{text}` is not a number of CPUs like 0.5 or \"2\" (from 0.01 to 1024)");
        let value: f64 = text.trim().parse().map_err(|_| expected())?;
        Cpus::from_f64(value).ok_or_else(expected)
    }

    fn from_f64(value: f64) -> Option<Self> {
        let milli = (value * 1000.0).round();
        (value.is_finite() && (10.0..=1_024_000.0).contains(&milli)).then_some(Cpus(milli as u32))
    }

    /// Docker's `NanoCpus`.
    pub fn nano(&self) -> i64 {
        i64::from(self.0) * 1_000_000
    }

    pub fn human(&self) -> String {
        let whole = self.0 / 1000;
        let frac = self.0 % 1000;
        if frac == 0 {
            whole.to_string()
        } else {
            format!("{whole}.{}", format!("{frac:03}").trim_end_matches('0'))
        }
    }
}

impl Serialize for Cpus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.human())
    }
}

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d).map_err(|_| serde::de::Error::custom("expected a number of CPUs like 0.5"))? {
            Raw::Number(n) => {
                Cpus::from_f64(n).ok_or_else(|| serde::de::Error::custom(format!("`{n}` is not a number of CPUs from 0.01 to 1024")))
            }
            Raw::Text(t) => Cpus::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// A share of requests, written as a percentage: `"10%"`, `"2.5%"`; kept in
/// hundredths of a percent (`"10%"` is 1000) so that it compares exactly.
/// `"100%"` never rolls back (no more than every request can fail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ErrorRate(pub u32);

impl ErrorRate {
    /// Fewer failed requests than this never roll back, whatever the rate:
    /// two failures out of three requests is noise, not an outage.
    pub const MIN_ERRORS: u64 = 5;
    /// 100%, in hundredths of a percent.
    pub const ALL: u32 = 10_000;

    pub fn parse(text: &str) -> Result<Self, String> {
        let expected = || format!("`{text}` is not a percentage of requests like \"10%\" (from \"0%\" to \"100%\")");
        let number = text.trim().strip_suffix('%').ok_or_else(expected)?;
        let value: f64 = number.trim().parse().map_err(|_| expected())?;
        let hundredths = (value * 100.0).round();
        if !value.is_finite() || !(0.0..=f64::from(Self::ALL)).contains(&hundredths) {
            return Err(expected());
        }
        Ok(ErrorRate(hundredths as u32))
    }

    /// Whether `errors` out of `requests` is above this rate.
    pub fn exceeded_by(&self, errors: u64, requests: u64) -> bool {
        u128::from(errors) * u128::from(Self::ALL) > u128::from(self.0) * u128::from(requests)
    }

    fn is_default(&self) -> bool {
        *self == ErrorRate::default()
    }
}

impl Default for ErrorRate {
    /// 10%.
    fn default() -> Self {
        ErrorRate(1000)
    }
}

impl std::fmt::Display for ErrorRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (whole, frac) = (self.0 / 100, self.0 % 100);
        if frac == 0 {
            write!(f, "{whole}%")
        } else {
            write!(f, "{whole}.{}%", format!("{frac:02}").trim_end_matches('0'))
        }
    }
}

impl Serialize for ErrorRate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ErrorRate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d).map_err(|_| serde::de::Error::custom("expected a percentage of requests like \"10%\""))?;
        ErrorRate::parse(&text).map_err(serde::de::Error::custom)
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
fn default_min_ready() -> Interval {
    Interval(Duration::from_secs(3))
}
fn default_watch() -> Interval {
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<Cpus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}

impl ProcessConfig {
    pub fn limits(&self) -> Limits {
        Limits { memory: self.memory, cpus: self.cpus, pids: self.pids }
    }
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

impl std::fmt::Display for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
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

/// A bad `slipway.toml` (or router configuration): which file, which key,
/// what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}: {expected}")]
pub struct ConfigError {
    pub file: String,
    /// Dotted path to the key, or "(document)" for a syntax error.
    pub key: String,
    pub expected: String,
}

impl ConfigError {
    /// A bad value found in `text` (read from `file`) once it had parsed:
    /// `expected` gets the line `key` is on, when the file writes it.
    pub fn in_document(text: &str, file: &str, key: String, expected: String) -> ConfigError {
        let at = line_of(text, &key).map(|line| format!(" (line {line})")).unwrap_or_default();
        ConfigError { file: file.into(), key, expected: format!("{expected}{at}") }
    }
}

/// Deserializes a TOML document read from `file`; an error names the file,
/// the dotted key (or "(document)") and the line. Shared by `slipway.toml`
/// and the router's configuration file.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, file: &str) -> Result<T, ConfigError> {
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.message().trim().to_string();
        let at = inner
            .span()
            .map(|span| {
                // Newlines before the span, plus one: `lines()` would count a
                // key at the start of line N as on line N - 1.
                let line = text.as_bytes()[..span.start.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1;
                format!(" (line {line})")
            })
            .unwrap_or_default();
        ConfigError { file: file.into(), key: if key == "." { "(document)".into() } else { key }, expected: format!("{message}{at}") }
    })
}

/// The line of `text` that `key` is on: a dotted path as `ConfigError`
/// names it (`web.port`, `web.hosts[1]`, `processes.worker.command`).
/// For a check made after the document parsed, which has no span of its
/// own; `None` where the key is not written (a default) or is not found.
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let document = toml_edit::ImDocument::parse(text).ok()?;
    let mut item = document.as_item();
    let mut span = None;
    for segment in key.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, Some(rest.strip_suffix(']')?.parse::<usize>().ok()?)),
            None => (segment, None),
        };
        let (k, next) = item.as_table_like()?.get_key_value(name)?;
        span = k.span().or_else(|| next.span());
        item = next;
        if let Some(i) = index {
            span = item.as_array()?.get(i)?.span();
        }
    }
    let start = span?.start.min(text.len());
    Some(text.as_bytes()[..start].iter().filter(|b| **b == b'\n').count() + 1)
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
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_') && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl AppConfig {
    /// Parses and validates `text`, read from `file` (named in errors).
    pub fn parse(text: &str, file: &str) -> Result<AppConfig, ConfigError> {
        let err = |key: &str, expected: String| ConfigError::in_document(text, file, key.into(), expected);
        let config: AppConfig = parse_toml(text, file)?;
        if config.web.port == 0 {
            return Err(err("web.port", "expected a port between 1 and 65535, found 0".into()));
        }
        if !config.web.health_path.starts_with('/') {
            return Err(err("web.health_path", format!("expected a path starting with `/`, found `{}`", config.web.health_path)));
        }
        if config.web.health_timeout.0.is_zero() {
            return Err(err("web.health_timeout", "expected a duration above zero".into()));
        }
        if config.web.min_ready.0 > config.web.health_timeout.0 {
            return Err(err(
                "web.min_ready",
                format!("expected a duration no longer than web.health_timeout ({})", config.web.health_timeout),
            ));
        }
        if config.web.pids == Some(0) {
            return Err(err("web.pids", "expected a number of processes above zero".into()));
        }
        if config.web.replicas == 0 {
            return Err(err("web.replicas", "expected at least 1 (a release always serves its web)".into()));
        }
        for (i, constraint) in config.web.hosts.iter().enumerate() {
            if let Some(why) = crate::placement::form_problem(constraint) {
                return Err(err(&format!("web.hosts[{i}]"), why));
            }
        }
        for (name, service) in &config.services {
            if !is_env_name(&service.env) {
                return Err(err(
                    &format!("services.{name}.env"),
                    format!("expected an environment variable name, found `{}`", service.env),
                ));
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
                return Err(err(
                    &format!("processes.{name}.command"),
                    "expected a non-empty list like [\"python3\", \"worker.py\"]".into(),
                ));
            }
            if process.pids == Some(0) {
                return Err(err(&format!("processes.{name}.pids"), "expected a number of processes above zero".into()));
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
        // The line the key is on, at the start of a line as in the middle.
        rejects("[web]\nport = 80\n\nprot = 80\n", "web.prot", "(line 4)");
        rejects("[web]\nport = \"x\"\n", "web.port", "(line 2)");
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
        rejects("[web]\nreplicas = 0\n", "web.replicas", "at least 1");
        rejects("[web]\nhosts = [\"node.labels.region==eu\", \"region=eu\"]\n", "web.hosts[1]", "expected ATTRIBUTE==VALUE");
    }

    #[test]
    fn bad_values_found_after_parsing_name_their_line_too() {
        let toml = "# the app\n[web]\nport = 8080\nreplicas = 0\n\n[processes.w]\ncommand = [\"a\"]\nreplicas = 21\n";
        rejects(toml, "web.replicas", "at least 1 (a release always serves its web) (line 4)");
        rejects("[web]\nhosts = [\n  \"node.labels.region==eu\",\n  \"region=eu\",\n]\n", "web.hosts[1]", "(line 4)");
        rejects("[release]\ncommands = [\"make migrate\", \"  \"]\n", "release.commands[1]", "(line 2)");
        rejects("[services]\ndb = { type = \"tcp\", env = \"1DB\" }\n", "services.db.env", "(line 2)");
        rejects("\n[processes.Worker]\ncommand = [\"a\"]\n", "processes.Worker", "(line 2)");
        rejects("[processes.w]\n\ncommand = [\"a\"]\nreplicas = 21\n", "processes.w.replicas", "(line 4)");
        // A value from a default, written nowhere, has no line to name.
        let defaulted = parse("[web]\nhealth_timeout = \"1s\"\n").unwrap_err();
        assert_eq!(defaulted.key, "web.min_ready");
        assert!(!defaulted.expected.contains("(line"), "{defaulted}");
        assert_eq!(super::line_of("[web]\nport = 1\n", "web.nothing"), None);
        assert_eq!(super::line_of("[web]\nhosts = [\"a==b\"]\n", "web.hosts[3]"), None);
    }

    #[test]
    fn limits_and_watch_parse() {
        let c = parse(
            "[web]\nmin_ready = \"2s\"\nwatch = 0\nmemory = \"256m\"\ncpus = 0.5\npids = 100\n\
             [processes.w]\ncommand = [\"a\"]\nmemory = \"1g\"\ncpus = \"2\"\n",
        )
        .unwrap();
        assert_eq!(c.web.min_ready.0, Duration::from_secs(2));
        assert!(c.web.watch.0.is_zero());
        assert_eq!(c.web.limits(), Limits { memory: Some(Memory(256 << 20)), cpus: Some(Cpus(500)), pids: Some(100) });
        assert_eq!(c.processes["w"].limits().memory.unwrap().human(), "1g");
        assert_eq!(c.processes["w"].limits().cpus.unwrap().nano(), 2_000_000_000);
        assert_eq!(AppConfig::from_value(&c.to_value()).unwrap(), c);
        let d = parse("").unwrap();
        assert_eq!((d.web.min_ready.0, d.web.watch.0), (Duration::from_secs(3), Duration::from_secs(60)));
        assert!(d.web.limits().is_empty());
        assert_eq!(Cpus(1250).human(), "1.25");
        assert_eq!(Memory::parse("64MB").unwrap().human(), "64m");
    }

    #[test]
    fn bad_limits_and_watch_are_named() {
        rejects("[web]\nmemory = \"lots\"\n", "web.memory", "memory size like \"512m\"");
        rejects("[web]\nmemory = \"1k\"\n", "web.memory", "smallest limit");
        rejects("[web]\ncpus = \"half\"\n", "web.cpus", "number of CPUs");
        rejects("[web]\ncpus = 0\n", "web.cpus", "0.01 to 1024");
        rejects("[web]\npids = 0\n", "web.pids", "above zero");
        rejects("[web]\nmin_ready = \"soon\"\n", "web.min_ready", "duration");
        rejects("[web]\nmin_ready = \"2m\"\n", "web.min_ready", "no longer than web.health_timeout (60s)");
        rejects("[web]\nwatch = \"-1s\"\n", "web.watch", "duration");
        rejects("[web]\nwatch_max_error_rate = 10\n", "web.watch_max_error_rate", "percentage of requests like \"10%\"");
        rejects("[web]\nwatch_max_error_rate = \"0.1\"\n", "web.watch_max_error_rate", "percentage");
        rejects("[web]\nwatch_max_error_rate = \"120%\"\n", "web.watch_max_error_rate", "to \"100%\"");
        rejects("[web]\nwatch_max_error_rate = \"-1%\"\n", "web.watch_max_error_rate", "percentage");
        rejects("[processes.w]\ncommand = [\"a\"]\nmemory = \"12q\"\n", "processes.w.memory", "memory size");
    }

    #[test]
    fn error_rates_are_percentages() {
        let c = parse("[web]\nwatch_max_error_rate = \"2.5%\"\n").unwrap();
        assert_eq!(c.web.watch_max_error_rate, ErrorRate(250));
        assert_eq!(c.web.watch_max_error_rate.to_string(), "2.5%");
        assert_eq!(AppConfig::from_value(&c.to_value()).unwrap(), c);
        let d = parse("").unwrap();
        assert_eq!(d.web.watch_max_error_rate.to_string(), "10%");
        assert!(d.to_value()["web"].get("watch_max_error_rate").is_none(), "the default is not recorded");
        let ten = ErrorRate::default();
        assert!(!ten.exceeded_by(10, 100) && ten.exceeded_by(11, 100));
        assert!(!ErrorRate::parse("100%").unwrap().exceeded_by(50, 50), "100% never rolls back");
        assert!(ErrorRate::parse("0%").unwrap().exceeded_by(1, u64::MAX));
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
