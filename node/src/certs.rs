//! Keeps a router's certificates in step with the certificates stream:
//! read every certificate before serving, then follow the stream and swap
//! in a new table when a certificate is stored or removed, a domain's
//! redirect to HTTPS is set, or an ACME challenge starts or ends. Chains and keys are loaded from the value table by fingerprint
//! (`slipway_engine::certificates`), once each; a certificate that cannot
//! be loaded (a missing or broken value) is logged, and the domain keeps
//! what it served before, if anything.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use slipway_engine::certificates::{self, Certificates};
use slipway_engine::load::LoadError;
use slipway_proto::event::ChallengeMethod;
use slipway_router::{TlsHandle, TlsTable};
use slipway_store::subscription::wait_for_wakeup;
use slipway_store::EventStore;

/// How long to wait for a wake-up before reading the stream anyway.
const POLL: Duration = Duration::from_millis(500);

type Key = Arc<slipway_router::CertifiedKey>;

pub struct CertFollower {
    store: Arc<dyn EventStore>,
    certificates: Certificates,
    handle: TlsHandle,
    /// Loaded keys by fingerprint.
    loaded: HashMap<String, Key>,
    /// What each domain serves now.
    serving: HashMap<String, Key>,
    /// The TLS-ALPN-01 answers made for the open challenges, by token.
    alpn_answers: HashMap<String, Key>,
}

impl CertFollower {
    /// Reads the certificates stream and loads every certificate.
    pub async fn start(store: Arc<dyn EventStore>) -> Result<CertFollower, LoadError> {
        let certificates = certificates::load(&*store).await?;
        let mut follower = CertFollower {
            store,
            certificates,
            handle: TlsHandle::default(),
            loaded: HashMap::new(),
            serving: HashMap::new(),
            alpn_answers: HashMap::new(),
        };
        follower.rebuild().await;
        Ok(follower)
    }

    pub fn handle(&self) -> TlsHandle {
        self.handle.clone()
    }

    /// Follows the stream until `shutdown`; a store outage is retried and
    /// the router serves the certificates it has meanwhile.
    pub async fn follow(mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut wake = self.store.wakeups();
        loop {
            wake.borrow_and_update();
            match certificates::catch_up(&*self.store, &mut self.certificates).await {
                Ok(true) => self.rebuild().await,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "reading certificates failed; retrying"),
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = wait_for_wakeup(&mut wake, POLL) => {}
            }
        }
    }

    /// Builds the table from the fold, loading what is new.
    async fn rebuild(&mut self) {
        for (domain, state) in &self.certificates.by_domain {
            let Some(current) = &state.current else {
                // Removed (`cert remove`): served no more.
                self.serving.remove(domain);
                continue;
            };
            let key = match self.loaded.get(&current.fingerprint) {
                Some(key) => key.clone(),
                None => match load(&*self.store, &current.fingerprint).await {
                    Ok(key) => {
                        self.loaded.insert(current.fingerprint.clone(), key.clone());
                        key
                    }
                    Err(reason) => {
                        tracing::error!(%domain, fingerprint = %current.fingerprint, %reason, "a stored certificate cannot serve; the domain keeps what it had");
                        continue;
                    }
                },
            };
            self.serving.insert(domain.clone(), key);
        }
        let open = &self.certificates.challenges;
        let http = open.iter().filter(|(_, c)| c.method == ChallengeMethod::Http01);
        let challenges = http.map(|(token, c)| (token.clone(), c.key_authorization.clone()));
        self.alpn_answers.retain(|token, _| open.contains_key(token));
        let mut alpn = Vec::new();
        for (token, c) in open.iter().filter(|(_, c)| c.method == ChallengeMethod::TlsAlpn01) {
            let answer = match self.alpn_answers.get(token) {
                Some(answer) => answer.clone(),
                None => match slipway_router::tls::acme_alpn_certificate(&c.domain, &c.key_authorization) {
                    Ok(answer) => self.alpn_answers.entry(token.clone()).or_insert(answer).clone(),
                    Err(reason) => {
                        tracing::error!(domain = %c.domain, %reason, "cannot answer a TLS-ALPN-01 challenge");
                        continue;
                    }
                },
            };
            alpn.push((c.domain.clone(), answer));
        }
        let redirects = self.certificates.redirects.iter().map(|(d, on)| (d.clone(), *on));
        let table = TlsTable::new(self.serving.iter().map(|(d, k)| (d.clone(), k.clone())), challenges)
            .with_redirects(redirects)
            .with_alpn_challenges(alpn);
        self.handle.replace(table);
        tracing::debug!(certificates = self.serving.len(), version = self.certificates.version, "certificates applied");
    }
}

/// A certificate's key from the value table. The reason names no key material.
async fn load(store: &dyn EventStore, fingerprint: &str) -> Result<Key, String> {
    let (chain, key) = certificates::load_pair(store, fingerprint)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "its chain and key are not in the value table".to_string())?;
    slipway_router::certified_key(chain.as_bytes(), key.as_bytes()).map_err(|e| e.to_string())
}
