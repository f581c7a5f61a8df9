//! Where a repository lives on the network, split far enough to match SSH
//! host keys: the workers use it to pick the `known_hosts` lines a fetch
//! trusts, and the engine to refuse, when a project's source access is
//! set, pinned keys none of which is for the repository's host (the fetch
//! would trust the first key it met instead, and the pin the user meant
//! would never be checked).

use slipway_proto::event::known_host_field;

/// A network repository address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteAddress {
    pub ssh: bool,
    pub host: String,
    pub port: Option<u16>,
}

impl RemoteAddress {
    /// How `known_hosts` lines name this host: `host`, or `[host]:port`
    /// off port 22.
    pub fn known_host_field(&self) -> String {
        match self.port {
            Some(port) if port != 22 => format!("[{}]:{port}", self.host),
            _ => self.host.clone(),
        }
    }
}

/// The network address `repository` names, or `None` for a local one.
pub fn remote_address(repository: &str) -> Option<RemoteAddress> {
    if let Some((scheme, rest)) = repository.split_once("://") {
        if scheme == "file" {
            return None;
        }
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = split_port(hostport);
        return Some(RemoteAddress { ssh: scheme == "ssh", host, port });
    }
    // git's scp-like form: a colon before the first slash.
    let first = repository.split('/').next().unwrap_or_default();
    let (userhost, _) = first.split_once(':')?;
    let host = userhost.rsplit_once('@').map_or(userhost, |(_, h)| h);
    Some(RemoteAddress { ssh: true, host: host.trim_matches(['[', ']']).to_string(), port: None })
}

fn split_port(hostport: &str) -> (String, Option<u16>) {
    if let Some(rest) = hostport.strip_prefix('[') {
        // [v6]:port
        let (host, after) = rest.split_once(']').unwrap_or((rest, ""));
        return (host.to_string(), after.strip_prefix(':').and_then(|p| p.parse().ok()));
    }
    match hostport.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty() => (host.to_string(), port.parse().ok()),
        _ => (hostport.to_string(), None),
    }
}

/// Why trusted host keys `lines` cannot serve `repository`: none of them
/// is for its SSH host and port. `None` when one is, when there are none
/// (trust on first use), or when the repository is not reached over SSH.
pub fn pin_problem(repository: &str, lines: &[String]) -> Option<String> {
    let address = remote_address(repository).filter(|a| a.ssh)?;
    let field = address.known_host_field();
    if lines.is_empty() || lines.iter().any(|l| known_host_field(l) == field) {
        return None;
    }
    Some(format!(
        "--known-host (`known_hosts`): no line is for `{field}`, the repository's SSH host (a line starts with the host as SSH names it: \
         `{field} ssh-ed25519 AAAA...`, as `ssh-keyscan` prints it for that host and port)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let https = remote_address("https://git.example.com:8443/org/app.git").unwrap();
        assert_eq!(https, RemoteAddress { ssh: false, host: "git.example.com".into(), port: Some(8443) });
        let ssh = remote_address("ssh://git@127.0.0.1:2222/srv/app.git").unwrap();
        assert_eq!(ssh.known_host_field(), "[127.0.0.1]:2222");
        let scp = remote_address("git@github.com:org/app.git").unwrap();
        assert_eq!((scp.ssh, scp.known_host_field()), (true, "github.com".to_string()));
        assert_eq!(remote_address("ssh://[::1]:22/app.git").unwrap().known_host_field(), "::1");
        assert_eq!(remote_address("/srv/app"), None);
        assert_eq!(remote_address("file:///srv/app"), None);
        assert_eq!(remote_address("./a:b/c"), None, "a colon after a slash is a path");
    }

    #[test]
    fn pins_must_name_the_repositorys_ssh_host_and_port() {
        let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG";
        let lines = |host: &str| vec![format!("{host} {key}")];
        let repo = "ssh://git@127.0.0.1:2222/app.git";
        assert_eq!(pin_problem(repo, &lines("[127.0.0.1]:2222")), None);
        assert_eq!(pin_problem(repo, &[]), None, "no pin: trust on first use");
        let why = pin_problem(repo, &lines("127.0.0.1")).expect("port 22 is not 2222");
        assert!(why.contains("no line is for `[127.0.0.1]:2222`"), "{why}");
        assert_eq!(pin_problem("git@github.com:org/app.git", &lines("github.com")), None);
        assert!(pin_problem("git@github.com:org/app.git", &lines("gitlab.com")).is_some());
        assert_eq!(pin_problem("https://git.example.com/app.git", &lines("elsewhere")), None, "not SSH: nothing to match");
    }
}
