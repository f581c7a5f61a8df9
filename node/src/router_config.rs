//! The router's configuration file (`slipway router --router-config FILE`):
//! its `[router]` section sets the proxy's caps and timeouts
//! ([`ServeOptions`]). Every key is optional; an unknown key or a bad value
//! is an error naming the file and the key, as for `slipway.toml`. Its TLS
//! keys (`https_listen`, `https_redirect`, `hsts`) set the HTTPS listener.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use slipway_proto::config::{parse_toml, ConfigError, Interval};
use slipway_router::{Cidr, Edge, ServeOptions, TlsHandle};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    router: Section,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Section {
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    header_timeout: Option<Interval>,
    idle_timeout: Option<Interval>,
    body_timeout: Option<Interval>,
    request_timeout: Option<Interval>,
    connect_timeout: Option<Interval>,
    eject_after: Option<Interval>,
    trusted_proxies: Vec<String>,
    https_listen: Option<String>,
    https_redirect: Option<bool>,
    hsts: Option<Interval>,
}

/// Everything the file sets.
#[derive(Debug, Default)]
pub struct RouterFile {
    /// The proxy's options; `edge` carries the redirect and HSTS settings.
    pub proxy: ServeOptions,
    /// Where the HTTPS listener binds (`--https-listen` wins over it).
    pub https_listen: Option<SocketAddr>,
}

/// The proxy's options from the file at `path`.
pub fn load(path: &Path) -> Result<ServeOptions, ConfigError> {
    load_file(path).map(|f| f.proxy)
}

/// Everything the file at `path` sets.
pub fn load_file(path: &Path) -> Result<RouterFile, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        key: "(file)".into(),
        expected: format!("a readable file: {e}"),
    })?;
    parse_file(&text, &file)
}

/// The proxy's options from `text`, read from `file` (named in errors);
/// what the file leaves out keeps [`ServeOptions::default`]'s value.
pub fn parse(text: &str, file: &str) -> Result<ServeOptions, ConfigError> {
    parse_file(text, file).map(|f| f.proxy)
}

/// Everything `text`, read from `file`, sets.
pub fn parse_file(text: &str, file: &str) -> Result<RouterFile, ConfigError> {
    let err = |key: &str, expected: String| ConfigError::in_document(text, file, format!("router.{key}"), expected);
    let section = parse_toml::<File>(text, file)?.router;
    let mut options = ServeOptions::default();
    let positive = |key: &str, value: Option<Interval>, into: &mut Duration| match value {
        Some(Interval(d)) if d.is_zero() => Err(err(key, "expected a duration above zero, like \"10s\"".into())),
        Some(Interval(d)) => {
            *into = d;
            Ok(())
        }
        None => Ok(()),
    };
    positive("header_timeout", section.header_timeout, &mut options.header_read_timeout)?;
    positive("idle_timeout", section.idle_timeout, &mut options.idle_timeout)?;
    positive("body_timeout", section.body_timeout, &mut options.body_timeout)?;
    positive("connect_timeout", section.connect_timeout, &mut options.connect_timeout)?;
    positive("eject_after", section.eject_after, &mut options.eject_after)?;
    if let Some(Interval(d)) = section.request_timeout {
        options.request_timeout = (!d.is_zero()).then_some(d);
    }
    if let Some(max) = section.max_connections {
        if max == 0 {
            return Err(err("max_connections", "expected a number of connections above zero".into()));
        }
        options.max_connections = max;
    }
    if let Some(per_ip) = section.max_connections_per_ip {
        if per_ip == 0 {
            return Err(err("max_connections_per_ip", "expected a number of connections above zero".into()));
        }
        options.max_connections_per_ip = per_ip;
    }
    if options.max_connections_per_ip > options.max_connections {
        return Err(err(
            "max_connections_per_ip",
            format!("expected at most router.max_connections ({}), found {}", options.max_connections, options.max_connections_per_ip),
        ));
    }
    for (i, text) in section.trusted_proxies.iter().enumerate() {
        let cidr: Cidr = text.parse().map_err(|e| err(&format!("trusted_proxies[{i}]"), e))?;
        options.trusted_proxies.push(cidr);
    }
    let https_listen = match &section.https_listen {
        Some(text) => {
            Some(text.parse::<SocketAddr>().map_err(|e| err("https_listen", format!("expected an address such as \"0.0.0.0:443\": {e}")))?)
        }
        None => None,
    };
    let mut edge = Edge::new(TlsHandle::default());
    edge.redirect = section.https_redirect.unwrap_or(true);
    edge.hsts = match section.hsts {
        Some(Interval(d)) if d.is_zero() => None,
        Some(Interval(d)) => Some(d),
        None => None,
    };
    options.edge = Some(edge);
    Ok(RouterFile { proxy: options, https_listen })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_read_and_the_rest_keep_their_defaults() {
        let text = r#"
[router]
max_connections = 5000
max_connections_per_ip = 64
header_timeout = "5s"
idle_timeout = "2m"
body_timeout = 20
request_timeout = "0"
trusted_proxies = ["10.0.0.0/8", "2001:db8::1"]
eject_after = "250ms"
"#;
        let o = parse(text, "router.toml").unwrap();
        assert_eq!((o.max_connections, o.max_connections_per_ip), (5000, 64));
        assert_eq!(
            (o.header_read_timeout, o.idle_timeout, o.body_timeout),
            (Duration::from_secs(5), Duration::from_secs(120), Duration::from_secs(20))
        );
        assert_eq!(o.request_timeout, None, "0 turns the request timeout off");
        assert_eq!(o.trusted_proxies.iter().map(ToString::to_string).collect::<Vec<_>>(), ["10.0.0.0/8", "2001:db8::1/128"]);
        assert_eq!(o.connect_timeout, ServeOptions::default().connect_timeout);
        assert_eq!(o.eject_after, Duration::from_millis(250));
        let empty = parse("", "router.toml").unwrap();
        assert_eq!((empty.max_connections, empty.request_timeout), (10_000, Some(Duration::from_secs(300))));
        let edge = empty.edge.unwrap();
        assert_eq!((edge.redirect, edge.hsts), (true, None), "redirects on, no HSTS by default");
    }

    #[test]
    fn the_tls_keys_set_the_https_listener_redirects_and_hsts() {
        let text = "[router]\nhttps_listen = \"0.0.0.0:8443\"\nhttps_redirect = false\nhsts = \"1h\"\n";
        let f = parse_file(text, "router.toml").unwrap();
        assert_eq!(f.https_listen, Some("0.0.0.0:8443".parse().unwrap()));
        let edge = f.proxy.edge.unwrap();
        assert_eq!((edge.redirect, edge.hsts), (false, Some(Duration::from_secs(3600))));
        let e = parse_file("[router]\nhttps_listen = \"443\"", "router.toml").unwrap_err();
        assert_eq!(e.key, "router.https_listen");
    }

    #[test]
    fn bad_values_name_the_file_and_the_key() {
        for (text, key) in [
            ("[router]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/40\"]", "router.trusted_proxies[1]"),
            ("[router]\nheader_timeout = \"soon\"", "router.header_timeout"),
            ("[router]\nidle_timeout = \"0s\"", "router.idle_timeout"),
            ("[router]\nmax_connections = -1", "router.max_connections"),
            ("[router]\nmax_connections = 10\nmax_connections_per_ip = 20", "router.max_connections_per_ip"),
            ("[router]\nmax_conections = 10", "router.max_conections"),
            ("[routr]", "routr"),
            ("[router\nx = 1", "(document)"),
        ] {
            let e = parse(text, "/etc/slipway/router.toml").unwrap_err();
            assert_eq!((e.file.as_str(), e.key.as_str()), ("/etc/slipway/router.toml", key), "{text}: {e}");
            assert!(e.to_string().starts_with(&format!("/etc/slipway/router.toml: {key}: ")), "{e}");
            assert!(e.expected.contains("(line "), "every one of these is written on a line: {e}");
        }
        let late = parse("# caps\n[router]\nmax_connections = 10\n\nmax_connections_per_ip = 20\n", "router.toml").unwrap_err();
        assert!(late.expected.ends_with("(line 5)"), "{late}");
        let missing = load(Path::new("/nonexistent/router.toml")).unwrap_err();
        assert_eq!((missing.file.as_str(), missing.key.as_str()), ("/nonexistent/router.toml", "(file)"));
    }
}
