//! libgit2's HTTP client, tuned once per process: the one place in the
//! workspace with `unsafe` code.
//!
//! libgit2 writes an HTTP request's headers and its body in two writes, on a
//! socket without `TCP_NODELAY`, so the body waits until the server
//! acknowledges the headers; a server with nothing to say yet delays that
//! acknowledgement (up to 40 ms on Linux). A fetch makes one or two such
//! requests, and on a near server that wait was most of its time: 1.4-1.9x
//! of `git fetch`. With `Expect: 100-continue` the server answers the
//! headers at once, and the body goes out on that answer (0.4-0.6x of git,
//! `slipway-bench-fetch`).
//!
//! Every git server we know answers it (nginx and Apache in front of
//! `git http-backend`, Go's `net/http` behind GitHub, GitLab, Gitea and
//! Forgejo, Jetty behind Gerrit). One that does not, or a proxy on the way,
//! would leave each fetch waiting until its deadline, which fails as timed
//! out; one that refuses it (417) fails the fetch with a reason that says
//! so. `SLIPWAY_GIT_EXPECT_CONTINUE=off` on the workers turns it off.
//!
//! The setting is a global of libgit2's, and git2 offers no safe way to set
//! it, hence the `unsafe` block below; see its SAFETY note.

use std::sync::Once;

/// The environment variable that turns `Expect: 100-continue` off.
pub const EXPECT_CONTINUE_VAR: &str = "SLIPWAY_GIT_EXPECT_CONTINUE";

/// Whether a value of [`EXPECT_CONTINUE_VAR`] leaves it on (unset: on).
pub fn expect_continue(value: Option<&str>) -> bool {
    !value.is_some_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "off" | "0" | "false" | "no"))
}

/// Sets libgit2's HTTP options for this process, once; called before every
/// network operation over HTTP(S) (`git_remote`'s callbacks).
pub fn tune() {
    static TUNED: Once = Once::new();
    TUNED.call_once(|| {
        if !expect_continue(std::env::var(EXPECT_CONTINUE_VAR).ok().as_deref()) {
            return;
        }
        libgit2_sys::init();
        let option = libgit2_sys::GIT_OPT_ENABLE_HTTP_EXPECT_CONTINUE as std::os::raw::c_int;
        // SAFETY: `git_libgit2_opts` with this option takes one `int` and
        // stores it in a global flag, which libgit2 reads only when it
        // builds an HTTP request. Every HTTP operation in this process calls
        // `tune` first, and `Once` makes this store happen before any of
        // them reads the flag; nothing else in the process sets it.
        #[allow(unsafe_code)]
        let status = unsafe { libgit2_sys::git_libgit2_opts(option, 1 as std::os::raw::c_int) };
        if status != 0 {
            tracing::warn!(status, "libgit2 refused to send Expect: 100-continue; HTTPS fetches will be slower");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expect_continue_is_on_unless_turned_off() {
        for on in [None, Some(""), Some("on"), Some("1"), Some("yes")] {
            assert!(expect_continue(on), "{on:?}");
        }
        for off in ["off", "OFF", "0", "false", "no", " off "] {
            assert!(!expect_continue(Some(off)), "{off}");
        }
    }
}
