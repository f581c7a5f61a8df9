//! `Step::Deploy`: creates and starts the deployment's web container from the
//! built image, with the environment's settings, its `web.port` published on
//! 127.0.0.1 at an ephemeral host port (read back after start). It gets no
//! traffic yet: the router switches only after the health check and cutover.
//!
//! Idempotent by name: a redelivered command finds the container the first
//! delivery created, starts it if it is not running, and reports it.

use bollard::Docker;
use slipway_proto::command::RunStep;
use slipway_proto::config::AppConfig;
use slipway_proto::event::WebContainerStarted;
use slipway_proto::Event;

use super::docker::{self, ContainerSpec, Failure, Lifetime, Role, RunState};
use super::{Runtime, Settings};

pub async fn run(command: &RunStep, env: &Settings, _rt: &Runtime) -> Event {
    match deploy(command, env).await {
        Ok(started) => Event::WebContainerStarted(started),
        Err(failure) => failure.for_command(command),
    }
}

async fn deploy(command: &RunStep, env: &Settings) -> Result<WebContainerStarted, Failure> {
    let ctx = &command.context;
    let web = AppConfig::from_value(&ctx.config).map_err(Failure::new)?.web;
    let port = web.port;
    let docker = docker::connect().await?;
    let image = docker::local_image(&docker, ctx, "the deploy").await?;
    let spec = ContainerSpec {
        name: docker::container_name(ctx, &Role::Web),
        image,
        cmd: None,
        env,
        labels: docker::labels(ctx, &Role::Web.to_string()),
        publish: Some(port),
        limits: web.limits(),
        lifetime: Lifetime::Serving,
    };
    let host_port = ensure_running(&docker, &spec, port).await?;
    let warnings = single_engine_warnings(&web);
    Ok(WebContainerStarted { container: spec.name, host_port, host: String::new(), upstreams: vec![], warnings })
}

/// What `[web]` asks that only the swarm runtime does: the single engine
/// runs one web container, on its own host. A release that asks for more
/// is told so rather than served by fewer than it thinks.
fn single_engine_warnings(web: &slipway_proto::config::WebConfig) -> Vec<String> {
    let mut warnings = Vec::new();
    if web.replicas > 1 {
        warnings.push(format!(
            "slipway.toml asks for {} web replicas (web.replicas), but the single-engine runtime runs one web container; \
             replicas need the swarm runtime (slipway worker --runtime swarm)",
            web.replicas
        ));
    }
    if !web.hosts.is_empty() {
        warnings.push(
            "slipway.toml places the web on chosen hosts (web.hosts), which only the swarm runtime does; the single engine runs it \
             on its own Docker host"
                .into(),
        );
    }
    warnings
}

/// Creates (unless it exists) and starts the container; returns its host port.
async fn ensure_running(docker: &Docker, spec: &ContainerSpec<'_>, port: u16) -> Result<u16, Failure> {
    let mut info = docker::ensure_container(docker, spec).await?;
    // Restarting (Docker is bringing a crashed container back) is left to
    // Docker: a start would be refused, and the crash is reported below.
    if matches!(docker::run_state(&info), RunState::Created | RunState::Exited(_)) {
        docker::start(docker, &spec.name).await?;
        info = docker::inspect(docker, &spec.name).await?;
    }
    if let Some(host_port) = docker::published_port(&info, port) {
        return Ok(host_port);
    }
    // The engine drops the port mapping once the process exits.
    let state = match (docker::crash_in(&info), docker::run_state(&info)) {
        (Some(crash), _) => {
            format!("{} right after it started", docker::crash_evidence(docker, &info, crash).await.describe())
        }
        (None, other) => format!("is {other} but publishes no port {port} on 127.0.0.1"),
    };
    let details = super::scrub(docker::last_log_lines(docker, &spec.name).await, spec.env);
    Err(Failure::new(format!("web container {} {state}", spec.name)).with_details(details))
}
