//! The command-line options that say how workers reach a project's
//! repository (`project create` and `project source`): credentials are read
//! from files (or standard input), never from the command line, where `ps`
//! and shell history would show them; a deploy key can be made here, and
//! only its public half is printed.

use std::io::Read;
use std::path::{Path, PathBuf};

use slipway_engine::source::SourceChange;

use crate::exit;

#[derive(clap::Args, Debug, Default, Clone)]
pub struct SourceArgs {
    /// HTTPS: read an access token from FILE (`-` reads standard input); it
    /// is sent as the password, with --username or `x-access-token`
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// HTTPS: the user name sent with the token or password
    #[arg(long)]
    username: Option<String>,
    /// HTTPS: read a password from FILE (`-` reads standard input)
    #[arg(long, value_name = "FILE", conflicts_with = "token_file")]
    password_file: Option<PathBuf>,
    /// SSH: the deploy key's private half (OpenSSH or PEM form)
    #[arg(long, value_name = "FILE")]
    ssh_key: Option<PathBuf>,
    /// SSH: read the deploy key's passphrase from FILE (`-` reads standard
    /// input), when the key is encrypted; kept as a secret like the key
    #[arg(long, value_name = "FILE", conflicts_with = "generate_ssh_key")]
    ssh_key_passphrase_file: Option<PathBuf>,
    /// SSH: make a new ed25519 deploy key, keep it as a secret, and print
    /// its public half to add to the git host (read-only access is enough)
    #[arg(long, conflicts_with = "ssh_key")]
    generate_ssh_key: bool,
    /// HTTPS: trust this CA certificate (PEM) for the git server, besides the system's CA bundle
    #[arg(long, value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// SSH: trust this host key, an OpenSSH known_hosts line as `ssh-keyscan -p PORT HOST` prints
    /// it (repeat for several; the lines given replace the keys trusted before). Without one, the
    /// first key met is trusted and recorded
    #[arg(long = "known-host", value_name = "LINE")]
    known_hosts: Vec<String>,
    /// Check out the repository's submodules too (with the same credentials)
    #[arg(long)]
    submodules: bool,
}

/// What only `project source` can do besides setting.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct SourceForgetArgs {
    /// Remove a credential: token, username, password, ssh_key, ssh_key_passphrase or ca_cert (repeat for several)
    #[arg(long, value_name = "NAME")]
    forget: Vec<String>,
    /// Forget every trusted host key (the next fetch trusts the key it meets)
    #[arg(long, conflicts_with = "known_hosts")]
    forget_host_keys: bool,
    /// Stop checking out submodules
    #[arg(long, conflicts_with = "submodules")]
    no_submodules: bool,
}

/// The change the options ask for, with credential values read, and the
/// public half of a key made here (to print).
pub fn change(args: &SourceArgs, forget: Option<&SourceForgetArgs>, project: &str) -> anyhow::Result<(SourceChange, Option<String>)> {
    let mut change = SourceChange::default();
    let mut put = |name: &str, file: &Option<PathBuf>| -> anyhow::Result<()> {
        if let Some(file) = file {
            change.set.insert(name.into(), read_secret(file, name)?);
        }
        Ok(())
    };
    put("token", &args.token_file)?;
    put("password", &args.password_file)?;
    put("ssh_key", &args.ssh_key)?;
    put("ssh_key_passphrase", &args.ssh_key_passphrase_file)?;
    put("ca_cert", &args.ca_cert)?;
    if let (Some(file), None) = (&args.ssh_key, &args.ssh_key_passphrase_file) {
        if change.set.get("ssh_key").is_some_and(|key| slipway_workers::steps::git_remote::ssh_key_is_encrypted(key)) {
            return Err(exit::usage(format!(
                "the SSH key in {} is protected by a passphrase: give it with --ssh-key-passphrase-file FILE (`-` reads standard input)",
                file.display()
            )));
        }
    }
    if let Some(user) = &args.username {
        change.set.insert("username".into(), user.clone());
    }
    let mut public = None;
    if args.generate_ssh_key {
        let (private, public_half) =
            slipway_workers::steps::git_remote::generate_deploy_key(&format!("slipway:{project}")).map_err(anyhow::Error::msg)?;
        change.set.insert("ssh_key".into(), private);
        change.deploy_key = Some(public_half.clone());
        public = Some(public_half);
    }
    if !args.known_hosts.is_empty() {
        change.known_hosts = Some(args.known_hosts.clone());
    }
    if args.submodules {
        change.submodules = Some(true);
    }
    if let Some(forget) = forget {
        change.removed = forget.forget.clone();
        if forget.forget_host_keys {
            change.known_hosts = Some(Vec::new());
        }
        if forget.no_submodules {
            change.submodules = Some(false);
        }
    }
    Ok((change, public))
}

/// A secret from a file or standard input, without its trailing newline
/// (a PEM key or certificate keeps its text as is).
fn read_secret(file: &Path, name: &str) -> anyhow::Result<String> {
    let text = if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| exit::usage(format!("reading the {name} from standard input: {e}")))?;
        text
    } else {
        std::fs::read_to_string(file).map_err(|e| exit::usage(format!("reading the {name} from {}: {e}", file.display())))?
    };
    Ok(if text.contains("-----BEGIN ") { text } else { text.trim_end_matches(['\n', '\r']).to_string() })
}
