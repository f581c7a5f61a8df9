//! JSON round trips and decoding errors for every message family.

#![allow(clippy::unwrap_used)] // a test that unwraps reports the failure by panicking

use chrono::{TimeZone, Utc};
use serde_json::json;
use slipway_proto::command::{DeploymentContext, RunStep};
use slipway_proto::envelope::{Message, Metadata};
use slipway_proto::event::*;
use slipway_proto::{Command, DecodeError, Envelope, Event, Step, TraceContext};
use uuid::Uuid;

fn meta() -> Metadata {
    Metadata {
        correlation_id: Uuid::from_u128(7),
        causation_id: Some(Uuid::from_u128(6)),
        actor: "cli:alice".into(),
        trace: Some(TraceContext::root(0xabc, 0xdef)),
    }
}

fn wrap<M: Message>(m: &M) -> Envelope {
    let at = Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap();
    Envelope::new(Uuid::from_u128(1), at, "deployment-x", m, meta()).unwrap()
}

fn sample_events() -> Vec<Event> {
    let d = Uuid::from_u128(42);
    vec![
        Event::ProjectCreated(ProjectCreated {
            name: "hello".into(),
            repository: "file:///srv/hello".into(),
            mirror_of: None,
            environments: vec!["test".into(), "live".into()],
            default_branch: "main".into(),
        }),
        Event::DeploymentRequested(DeploymentRequested {
            deployment_id: d,
            project: "hello".into(),
            environment: "test".into(),
            repository: "file:///srv/hello".into(),
            git_ref: "main".into(),
            mode: BuildMode::Local,
            no_cache: true,
            run_release: false,
            settings: [("SECRET_KEY".to_string(), "sha256:ab".to_string())].into(),
            dry_run: false,
            rollback_of: None,
            promoted_from: None,
            replay_of: None,
            source: Default::default(),
        }),
        Event::StepFailed(StepFailed {
            step: Step::Build,
            reason: "step 3/4 failed".into(),
            attempt: 1,
            details: vec!["line".into()],
            evidence: None,
        }),
        Event::HealthCheckPassed(HealthCheckPassed { path: "/".into(), status: 200, attempts: 3, elapsed_ms: 40 }),
        Event::RouteChanged(RouteChanged {
            project: "hello".into(),
            environment: "live".into(),
            deployment_id: Some(d),
            upstreams: vec!["127.0.0.1:32768".into()],
            reason: RouteReason::Cutover,
            standby: vec![],
        }),
        Event::TrafficSwitchRequested(TrafficSwitchRequested {
            route_version: 3,
            upstreams: vec!["127.0.0.1:32768".into()],
            routers: vec!["edge-1".into()],
            deadline: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        }),
        Event::TokenIssued(TokenIssued {
            name: "ci".into(),
            scope: TokenScope::Deploy,
            sha256: "ab".repeat(32),
            issued_by: "cli:alice".into(),
            expires_at: Some(chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap()),
        }),
        Event::TokenRevoked(TokenRevoked { name: "ci".into() }),
        Event::WebhookSecretRotated(WebhookSecretRotated { fingerprint: "hmac-sha256:00ff".into() }),
        Event::AutoDeploySet(AutoDeploySet { branch: "release/*".into(), environment: "live".into(), poll_seconds: Some(60) }),
        Event::AutoDeployRemoved(AutoDeployRemoved { branch: "release/*".into() }),
        Event::PushReceived(PushReceived {
            provider: WebhookProvider::Github,
            delivery: "72d3162e-cc78-11e3-81ab-4c9367dc0958".into(),
            body_sha256: Some("cd".repeat(32)),
            git_ref: "refs/heads/main".into(),
            commit: "ab".repeat(20),
            pusher: "octocat".into(),
            deployments: vec![PushDeployment { environment: "test".into(), deployment_id: d, rule: "main".into() }],
            superseded: vec![d],
            at: None,
            refused: vec!["shop live is frozen by the window \"0 18 * * FRI\" until 2026-12-07T10:00:00Z".into()],
        }),
        Event::PushSkipped(PushSkipped {
            provider: WebhookProvider::Gitlab,
            delivery: "k1".into(),
            body_sha256: None,
            git_ref: "refs/heads/main".into(),
            commit: "cd".repeat(20),
            pusher: "jo".into(),
            reason: "the head commit's message says [skip deploy]".into(),
        }),
        Event::EnvironmentAdded(EnvironmentAdded {
            name: "pr-42".into(),
            inherits: Some("test".into()),
            preview: Some(PreviewOrigin {
                kind: PreviewKind::PullRequest,
                number: Some(42),
                branch: "feature/x".into(),
                head_repo_fork: true,
            }),
            ttl_seconds: Some(7 * 86_400),
            at: Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap(),
        }),
        Event::ProjectRemoved(ProjectRemoved { name: "shop".into(), reason: "removed by cli:ann@laptop".into() }),
        Event::EnvironmentRemoved(EnvironmentRemoved {
            name: "pr-42".into(),
            reason: "pull request #42 closed".into(),
            cancelled: vec![d],
            retired: Some(d),
            route_removed: true,
        }),
        Event::RouteRemoved(RouteRemoved { project: "hello".into(), environment: "pr-42".into() }),
        Event::DomainAdded(DomainAdded { project: "hello".into(), environment: "live".into(), domain: "*.example.com".into() }),
        Event::ReleaseRerouted(ReleaseRerouted {
            deployment_id: d,
            upstreams: vec!["127.0.0.1:4711".into()],
            route_version: 12,
            routers: vec!["edge-1".into()],
            deadline: Utc.with_ymd_and_hms(2026, 12, 2, 12, 0, 15).unwrap(),
        }),
        Event::RerouteSettled(RerouteSettled { route_version: 12, acknowledged: vec!["edge-1".into()], missing: vec![] }),
        Event::ReplicasObserved(ReplicasObserved {
            deployment_id: d,
            service: "slipway-hello-live-web".into(),
            changes: vec![
                ReplicaChanged {
                    slot: 3,
                    change: ReplicaChange::NodeDown,
                    node: "10.0.0.4".into(),
                    from: String::new(),
                    error: String::new(),
                },
                ReplicaChanged {
                    slot: 3,
                    change: ReplicaChange::Rescheduled,
                    node: "10.0.0.2".into(),
                    from: "10.0.0.4".into(),
                    error: String::new(),
                },
            ],
            more: 0,
            running: 3,
            wanted: 3,
            unplaced: 0,
            reason: String::new(),
            role: "web".into(),
            crash_loop: 3,
            crash_loop_said: true,
        }),
        Event::ReplicasObserved(ReplicasObserved {
            deployment_id: d,
            service: "slipway-hello-live-web".into(),
            changes: vec![ReplicaChanged {
                slot: 2,
                change: ReplicaChange::Unplaceable,
                node: String::new(),
                from: String::new(),
                error: "no suitable node (scheduling constraints not satisfied on 3 nodes)".into(),
            }],
            more: 0,
            running: 2,
            wanted: 3,
            unplaced: 1,
            reason: "no suitable node (scheduling constraints not satisfied on 3 nodes)".into(),
            role: "web".into(),
            crash_loop: 0,
            crash_loop_said: false,
        }),
        Event::HostAvailabilityChanged(HostAvailabilityChanged {
            node: "node-2".into(),
            node_id: "abc".into(),
            availability: "drain".into(),
            previous: "active".into(),
            moved: vec!["slipway-hello-live-web.2 (running)".into()],
        }),
        Event::SecretsKeyRotated(SecretsKeyRotated { from: vec!["0011223344556677".into()], to: "8899aabbccddeeff".into(), values: 3 }),
        Event::DomainRemoved(DomainRemoved { project: "hello".into(), environment: "live".into(), domain: "www.example.com".into() }),
        Event::PreviewRuleSet(PreviewRuleSet {
            trigger: PreviewTrigger::Branches("feature/*".into()),
            inherit: "test".into(),
            ttl_seconds: 60,
        }),
        Event::PreviewRuleRemoved(PreviewRuleRemoved { trigger: PreviewTrigger::PullRequests }),
        Event::PullRequestReceived(PullRequestReceived {
            provider: WebhookProvider::Github,
            delivery: "d-1".into(),
            body_sha256: None,
            action: "opened".into(),
            number: 42,
            head_commit: "ab".repeat(20),
            head_branch: "feature/x".into(),
            fork: false,
            sender: "octocat".into(),
            environment: "pr-42".into(),
            outcome: "deployed".into(),
            deployment: Some(d),
            superseded: vec![],
            at: Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap(),
        }),
        Event::PreviewApproved(PreviewApproved {
            environment: "pr-42".into(),
            commit: "ab".repeat(20),
            approved_by: "token:alice".into(),
            deployment: d,
            at: Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap(),
        }),
        Event::RouterStarted(RouterStarted {
            router_id: "edge-1".into(),
            listen: "0.0.0.0:80".into(),
            domain: "example.com".into(),
            lease_ms: Some(30_000),
        }),
        Event::RouterExpired(RouterExpired {
            router_id: "edge-1".into(),
            last_seen: Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap(),
            lease_ms: 30_000,
        }),
    ]
}

#[test]
fn every_sample_event_round_trips_through_json() {
    for event in sample_events() {
        let env = wrap(&event);
        let bytes = env.to_json();
        let back = Envelope::from_json(bytes.as_bytes()).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.decode::<Event>().unwrap(), event);
        assert_eq!(back.schema_version, Event::current_version(event.message_type()).unwrap());
    }
}

#[test]
fn stored_bytes_are_stable_the_payload_text_is_its_values_text() {
    for event in sample_events() {
        let env = wrap(&event);
        // The payload's text is what serialising its `Value` gives, as it
        // was when the envelope held a `Value`.
        assert_eq!(env.payload.get(), serde_json::to_string(&event.payload().unwrap()).unwrap());
        assert_eq!(env.payload_value(), event.payload().unwrap());
        let bytes = env.to_json();
        assert_eq!(Envelope::from_json(bytes.as_bytes()).unwrap().to_json(), bytes);
    }
    // A body read back re-serialises to exactly its bytes, whatever its
    // payload's key order or spacing; equality is still by JSON value.
    let body = wrap(&sample_events()[3]).to_json();
    let payload = r#"{"status":200, "path":"/","elapsed_ms":40,"attempts":3}"#;
    let start = body.find(r#""payload":"#).unwrap() + r#""payload":"#.len();
    let odd = format!("{}{payload}}}", &body[..start]);
    let back = Envelope::from_json(odd.as_bytes()).unwrap();
    assert_eq!(back.to_json(), odd);
    assert_eq!(back, wrap(&sample_events()[3]));
    assert_eq!(back.decode::<Event>().unwrap(), sample_events()[3]);
}

#[test]
fn commands_round_trip_and_name_their_queue() {
    let cmd = Command::RunStep(RunStep {
        step: Step::HealthCheck,
        attempt: 2,
        context: DeploymentContext {
            deployment_id: Uuid::from_u128(9),
            project: "hello".into(),
            environment: "live".into(),
            repository: "file:///srv/hello".into(),
            git_ref: "v1.2".into(),
            mode: BuildMode::Cloud,
            no_cache: false,
            run_release: true,
            dry_run: false,
            settings: Default::default(),
            commit: Some("abc".into()),
            config: json!({"web": {"port": 80}}),
            image_id: Some("sha256:1".into()),
            image_ref: Some("127.0.0.1:5000/hello@sha256:2".into()),
            web_container: Some("slipway-hello-live-web".into()),
            web_port: Some(32768),
            web_upstreams: vec![],
            watch_until: None,
            reuse: Some(slipway_proto::command::ImageSource { deployment_id: Uuid::from_u128(3), image_id: "sha256:0".into() }),
            source: Default::default(),
        },
    });
    let env = wrap(&cmd);
    let back = Envelope::from_json(env.to_json().as_bytes()).unwrap();
    assert_eq!(back.decode::<Command>().unwrap(), cmd);
    assert_eq!(cmd.queue(), "slipway.step.health_check");
}

#[test]
fn unknown_type_names_the_type_and_the_known_ones() {
    let mut env = wrap(&sample_events()[0]);
    env.message_type = "ProjectExploded".into();
    let err = env.decode::<Event>().unwrap_err();
    assert!(matches!(err, DecodeError::UnknownType { .. }));
    let text = err.to_string();
    assert!(text.contains("ProjectExploded") && text.contains("DeploymentRequested"), "{text}");
    // An event is not a command.
    let err = wrap(&sample_events()[0]).decode::<Command>().unwrap_err();
    assert!(err.to_string().contains("unknown command type `ProjectCreated`"), "{err}");
}

#[test]
fn malformed_bytes_and_bad_payloads_are_errors_not_panics() {
    for bytes in [&b""[..], b"{", b"[]", b"null", b"{\"id\":\"nope\"}", &[0xff, 0xfe]] {
        let err = Envelope::from_json(bytes).unwrap_err();
        assert!(matches!(err, DecodeError::Malformed { .. }), "{err}");
    }
    let mut env = wrap(&sample_events()[3]);
    env.set_payload_value(&json!({"path": "/", "status": "two hundred"}));
    let err = env.decode::<Event>().unwrap_err();
    let text = err.to_string();
    assert!(text.contains("HealthCheckPassed") && text.contains("bad payload"), "{text}");
}

#[test]
fn a_newer_schema_version_is_refused_with_advice() {
    let mut env = wrap(&sample_events()[0]);
    env.schema_version = 99;
    let err = env.decode::<Event>().unwrap_err();
    assert!(err.to_string().contains("upgrade Slipway"), "{err}");
    env.schema_version = 0;
    assert!(matches!(env.decode::<Event>().unwrap_err(), DecodeError::BadPayload { .. }));
}

#[test]
fn version_one_deployment_requests_are_upgraded_on_read() {
    let mut env = wrap(&sample_events()[1]);
    env.schema_version = 1;
    env.set_payload_value(&json!({
        "deployment_id": Uuid::from_u128(42),
        "project": "hello",
        "environment": "live",
        "repository": "file:///srv/hello",
        "branch": "release",
    }));
    let Event::DeploymentRequested(req) = env.decode::<Event>().unwrap() else { panic!("wrong type") };
    assert_eq!(req.git_ref, "release");
    assert_eq!(req.mode, BuildMode::Cloud);
    assert!(req.run_release, "v1 deployments always ran release commands");
}

#[test]
fn acme_challenges_recorded_before_tls_alpn_01_read_as_http_01_and_the_method_is_written_by_name() {
    let ready = AcmeChallengeReady {
        domain: "a.example".into(),
        token: "t".into(),
        key_authorization: "t.k".into(),
        method: ChallengeMethod::TlsAlpn01,
    };
    let mut env = wrap(&Event::AcmeChallengeReady(ready));
    assert!(env.payload.get().contains(r#""method":"tls-alpn-01""#), "{}", env.payload.get());
    env.set_payload_value(&json!({ "domain": "a.example", "token": "t", "key_authorization": "t.k" }));
    let Event::AcmeChallengeReady(old) = env.decode::<Event>().unwrap() else { panic!("wrong type") };
    assert_eq!(old.method, ChallengeMethod::Http01);
}

#[test]
fn replica_records_written_before_unplaced_replicas_were_read_as_all_placed() {
    let written = json!({
        "deployment_id": Uuid::from_u128(42),
        "service": "slipway-hello-live-web",
        "changes": [{ "slot": 3, "change": "node_down", "node": "10.0.0.4" }],
        "running": 2,
        "wanted": 3,
    });
    let mut env = wrap(&sample_events().into_iter().find(|e| matches!(e, Event::ReplicasObserved(_))).unwrap());
    env.set_payload_value(&written);
    let Event::ReplicasObserved(old) = env.decode::<Event>().unwrap() else { panic!("wrong type") };
    assert_eq!(
        (old.unplaced, old.reason.as_str(), old.role.as_str(), old.more, old.crash_loop, old.crash_loop_said),
        (0, "", "", 0, 0, false)
    );
    assert_eq!(old.changes[0].change, ReplicaChange::NodeDown);
}

#[test]
fn trace_context_is_validated_and_children_keep_the_trace() {
    let root = TraceContext::root(0x1234, 0x99);
    assert_eq!(TraceContext::parse(&root.traceparent).unwrap(), root);
    let child = root.child(0x77);
    assert_eq!(child.trace_id(), root.trace_id());
    assert_ne!(child.traceparent, root.traceparent);
    for bad in ["", "00-xyz", "00-00000000000000000000000000000000-0000000000000001-01"] {
        assert!(TraceContext::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn token_events_keep_their_wire_form_and_scopes_parse_and_order() {
    let issued = Event::TokenIssued(TokenIssued {
        name: "ci".into(),
        scope: TokenScope::Admin,
        sha256: "00".repeat(32),
        issued_by: "cli:root".into(),
        expires_at: None,
    });
    // A token that never expires is recorded as tokens were before expiry existed.
    assert_eq!(issued.payload().unwrap(), json!({"name": "ci", "scope": "admin", "sha256": "00".repeat(32), "issued_by": "cli:root"}));
    assert_eq!(issued.message_type(), "TokenIssued");
    assert_eq!(Event::TokenRevoked(TokenRevoked { name: "ci".into() }).payload().unwrap(), json!({"name": "ci"}));
    assert!(TokenScope::Read < TokenScope::Deploy && TokenScope::Deploy < TokenScope::Admin);
    for scope in TokenScope::ALL {
        assert_eq!(scope.to_string().parse::<TokenScope>().unwrap(), scope);
    }
    let err = "root".parse::<TokenScope>().unwrap_err();
    assert!(err.contains("`root`") && err.contains("read, deploy, admin"), "{err}");
}
