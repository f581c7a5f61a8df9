//! The swarm runtime (`runtime::Containers`): a release's web, and each of
//! its process types, is a Docker Swarm service named from the release
//! (`service_name`), created through the worker's engine, which must be a
//! Swarm manager. Swarm does what a scheduler does — placement (`[web]
//! hosts` as constraints, replicas spread over the nodes), limits, restarts,
//! rescheduling when a node is lost — and Slipway keeps what is its own:
//! the health gate over every replica, the acknowledged cutover, the watch
//! and the retirement after the drain (which removes the service).
//!
//! **How routers reach the replicas.** Each task publishes the web port in
//! Swarm's *host mode* on an ephemeral port of its node, and the route
//! holds `<node address>:<that port>` for every replica. Not Swarm's
//! ingress (routing mesh): it balances again behind our router and hides
//! which replica answered, so the router could neither eject a dead replica
//! nor retry on another. Not an overlay network: the routers would have to
//! run as Swarm containers to join it, which ties the traffic edge to the
//! swarm's health. A node's address is its label `slipway.address` when
//! set (a private interface the routers reach), else the address it joined
//! the swarm with. Host mode binds every interface of the node: see the
//! README's firewall note.
//!
//! The image must come from a registry every node can pull from (`slipway
//! --registry`): the service names it by digest (`image_reference`).
//!
//! Task containers carry only `slipway.service`, never the deployment's
//! labels: a single-engine host agent or cleanup on a node must not take
//! them for its own. The services carry the deployment's labels, and
//! cleanup finds them by those.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
pub use bollard::models::NodeSpecAvailabilityEnum as Availability;
use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum, EndpointSpec, Limit, Node, NodeState,
    ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, Task, TaskSpec, TaskSpecContainerSpec, TaskSpecLogDriver, TaskSpecPlacement,
    TaskSpecResources, TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{ListServicesOptionsBuilder, ListTasksOptionsBuilder, UpdateNodeOptionsBuilder};
use bollard::Docker;
use futures::future::join_all;
use slipway_core::replicas::Replica;
use slipway_proto::command::{DeploymentContext, RemoveContainers, RetireRelease, RunStep};
use slipway_proto::config::{AppConfig, Limits};
use slipway_proto::event::{ContainersRemoved, HealthCheckPassed, ProcessContainer, ProcessesStarted, ReleaseWatched, WebContainerStarted};
use slipway_proto::placement::{satisfies, NodeFacts};
use slipway_proto::{Event, Step};
use uuid::Uuid;

use super::docker::{self, Backoff, Failure, Role};
use super::health_check::Settling;
use super::runtime::Containers;
use super::{cleanup, Runtime, Settings};
use crate::http::get_status;

/// The node label naming the address routers reach a node at.
pub const LABEL_ADDRESS: &str = "slipway.address";
/// The one label a task's container carries: its service.
pub const LABEL_SERVICE: &str = "slipway.service";
/// Docker's limit on a service name (a DNS label).
const NAME_MAX: usize = 63;
/// How long the replicas may take to run (pull, schedule, start).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How often tasks are looked at while waiting for them to run: two cheap
/// list calls to the manager, and every look sooner is a replica routed
/// sooner (at 250 ms, the wait for a look was a tenth of a deploy).
const POLL_EVERY: Duration = Duration::from_millis(25);
/// How often the watch looks at the tasks.
const WATCH_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Docker Swarm services, created through the worker's engine (a manager).
#[derive(Debug, Clone, Copy, Default)]
pub struct Swarm;

/// `slipway-<project>-<environment>-<deployment id, 32 hex>-<role>`, its
/// project and environment part shortened to fit Docker's 63 characters;
/// the id and role are never cut, so the name stays unique and
/// deterministic (a redelivered command finds the service).
pub fn service_name(ctx: &DeploymentContext, role: &Role) -> String {
    let tail = format!("{}-{role}", ctx.deployment_id.simple());
    let head = format!("slipway-{}-{}", ctx.project, ctx.environment);
    let room = NAME_MAX.saturating_sub(tail.len() + 1);
    let head: String = head.chars().take(room).collect();
    format!("{}-{tail}", head.trim_end_matches('-'))
}

/// What a service runs: the parts of `ServiceSpec` Slipway decides.
#[derive(Debug, Clone)]
pub struct ServicePlan<'a> {
    pub name: String,
    pub image: String,
    pub cmd: Option<Vec<String>>,
    pub env: &'a Settings,
    pub labels: HashMap<String, String>,
    pub replicas: u32,
    pub limits: Limits,
    pub constraints: Vec<String>,
    /// The container port published in host mode on an ephemeral node port.
    pub publish: Option<u16>,
}

/// The service's spec (pure).
pub fn service_spec(plan: &ServicePlan<'_>) -> ServiceSpec {
    let env = plan.env.iter().filter(|(k, _)| !super::git_remote::is_source_key(k)).map(|(k, v)| format!("{k}={v}")).collect();
    let limits = Limit {
        nano_cpus: plan.limits.cpus.map(|c| c.nano()),
        memory_bytes: plan.limits.memory.map(|m| i64::try_from(m.0).unwrap_or(i64::MAX)),
        pids: plan.limits.pids.map(i64::from),
    };
    let ports = plan.publish.map(|port| {
        vec![EndpointPortConfig {
            protocol: Some(EndpointPortConfigProtocolEnum::TCP),
            target_port: Some(i64::from(port)),
            // None: Swarm picks a free port on the task's node.
            published_port: None,
            publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
            ..Default::default()
        }]
    });
    ServiceSpec {
        name: Some(plan.name.clone()),
        labels: Some(plan.labels.clone()),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(plan.image.clone()),
                command: plan.cmd.clone(),
                env: Some(env),
                labels: Some(HashMap::from([(LABEL_SERVICE.to_string(), plan.name.clone())])),
                stop_grace_period: Some(nanos(cleanup::STOP_GRACE)),
                ..Default::default()
            }),
            resources: Some(TaskSpecResources { limits: Some(limits), ..Default::default() }),
            // Swarm restarts a crashed replica (as `unless-stopped` does on
            // one engine); the health check and the watch see the failed task.
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                delay: Some(nanos(Duration::from_secs(1))),
                ..Default::default()
            }),
            placement: Some(TaskSpecPlacement {
                constraints: (!plan.constraints.is_empty()).then(|| plan.constraints.clone()),
                ..Default::default()
            }),
            log_driver: Some(TaskSpecLogDriver {
                name: Some(docker::LOG_DRIVER.into()),
                options: Some(HashMap::from([
                    ("max-size".to_string(), docker::LOG_MAX_SIZE.to_string()),
                    ("max-file".to_string(), docker::LOG_FILES.to_string()),
                ])),
            }),
            ..Default::default()
        }),
        mode: Some(ServiceSpecMode {
            replicated: Some(ServiceSpecModeReplicated { replicas: Some(i64::from(plan.replicas)) }),
            ..Default::default()
        }),
        endpoint_spec: ports.map(|ports| EndpointSpec { ports: Some(ports), ..Default::default() }),
        ..Default::default()
    }
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// The address routers reach a node at: its `slipway.address` label, else
/// the address it joined the swarm with (a manager's may read 0.0.0.0 in
/// its status; its manager address says it then).
pub fn node_address(node: &Node) -> Option<String> {
    let label = node.spec.as_ref().and_then(|s| s.labels.as_ref()).and_then(|l| l.get(LABEL_ADDRESS)).cloned();
    let status = node.status.as_ref().and_then(|s| s.addr.clone()).filter(|a| !a.is_empty() && a != "0.0.0.0");
    let manager = || {
        let addr = node.manager_status.as_ref()?.addr.as_deref()?;
        Some(addr.rsplit_once(':').map_or(addr, |(host, _)| host).to_string())
    };
    label.or(status).or_else(manager)
}

fn state_of(task: &Task) -> Option<TaskState> {
    task.status.as_ref().and_then(|s| s.state)
}

fn wanted(task: &Task) -> bool {
    task.desired_state == Some(TaskState::RUNNING)
}

/// `<node address>:<published port>` of every running replica that
/// publishes `port`, in a stable order (pure).
pub fn upstreams(tasks: &[Task], nodes: &HashMap<String, Node>, port: u16) -> Vec<String> {
    let mut found = BTreeSet::new();
    for task in tasks.iter().filter(|t| wanted(t) && state_of(t) == Some(TaskState::RUNNING)) {
        let Some(address) = task.node_id.as_ref().and_then(|id| nodes.get(id)).and_then(node_address) else { continue };
        let ports = task.status.as_ref().and_then(|s| s.port_status.as_ref()).and_then(|p| p.ports.as_ref());
        let published = ports.into_iter().flatten().find(|p| p.target_port == Some(i64::from(port))).and_then(|p| p.published_port);
        if let Some(published) = published {
            found.insert(format!("{address}:{published}"));
        }
    }
    found.into_iter().collect()
}

/// How many replicas run.
pub fn running(tasks: &[Task]) -> usize {
    tasks.iter().filter(|t| wanted(t) && state_of(t) == Some(TaskState::RUNNING)).count()
}

/// Why Swarm will not run the service as asked, in plain words, if it says
/// so: a replica no node can take (its placement), or one a node rejected
/// (an image it cannot pull, a port it cannot bind). Pure.
pub fn cannot_run(name: &str, tasks: &[Task], constraints: &[String]) -> Option<String> {
    for task in tasks.iter().filter(|t| wanted(t)) {
        let status = task.status.as_ref()?;
        let err = status.err.as_deref().unwrap_or_default();
        let replica = task.slot.map(|s| format!(" replica {s}")).unwrap_or_default();
        match status.state {
            Some(TaskState::PENDING) if err.contains("no suitable node") => {
                let asked = match constraints.is_empty() {
                    true => "no placement constraints".to_string(),
                    false => format!("the placement [web] hosts = {constraints:?}"),
                };
                return Some(format!("no node can run {name}{replica}: Swarm says \"{err}\" ({asked})"));
            }
            Some(TaskState::REJECTED) => {
                return Some(format!("Swarm could not start {name}{replica}: {err}"));
            }
            _ => {}
        }
    }
    None
}

/// The replicas that failed (exited, were rejected) since `since`, as
/// "replica 2 on node X: <error>". A task shut down because its node was
/// lost is not a failure of the app's. Pure.
pub fn failures(tasks: &[Task], nodes: &HashMap<String, Node>) -> Vec<String> {
    tasks
        .iter()
        .filter(|t| matches!(state_of(t), Some(TaskState::FAILED | TaskState::REJECTED)))
        .map(|t| {
            let status = t.status.as_ref();
            let err = status.and_then(|s| s.err.clone()).unwrap_or_default();
            let code = status.and_then(|s| s.container_status.as_ref()).and_then(|c| c.exit_code);
            let node = t.node_id.as_ref().and_then(|id| nodes.get(id)).and_then(node_address).unwrap_or_else(|| "a node".into());
            let what = match (code, err.is_empty()) {
                (Some(code), _) if code != 0 => format!("exited with code {code}"),
                (_, false) => err,
                _ => "failed".into(),
            };
            format!("replica {} on {node} {what}", t.slot.unwrap_or(0))
        })
        .collect()
}

fn api(action: String, e: BollardError) -> Failure {
    Failure::new(format!("Docker Swarm could not {action}: {e}"))
}

fn is_status(e: &BollardError, code: u16) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code, .. } if *status_code == code)
}

/// The image reference every node can pull: the registry digest the build
/// pushed, else one the engine knows the image by (a re-used image's).
async fn image_reference(docker: &Docker, ctx: &DeploymentContext) -> Result<String, Failure> {
    if let Some(reference) = &ctx.image_ref {
        return Ok(reference.clone());
    }
    let image = ctx.image_id.as_deref().ok_or_else(|| Failure::new("no image recorded for this deployment; the build must run first"))?;
    let digests = docker.inspect_image(image).await.ok().and_then(|i| i.repo_digests).unwrap_or_default();
    digests.into_iter().next().ok_or_else(|| {
        Failure::new(format!(
            "image {image} was pushed to no registry: the swarm runtime needs one every node can pull from (slipway --registry HOST:PORT)"
        ))
    })
}

/// Creates the service unless it exists (a delivery of the same command
/// created it, earlier or at the same time): one call to the manager.
async fn ensure_service(docker: &Docker, spec: ServiceSpec) -> Result<(), Failure> {
    let name = spec.name.clone().unwrap_or_default();
    match docker.create_service(spec, None).await {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 409) => Ok(()),
        Err(e) => Err(api(format!("create service {name}"), e)),
    }
}

async fn tasks(docker: &Docker, service: &str) -> Result<Vec<Task>, Failure> {
    let filters = HashMap::from([("service", vec![service.to_string()])]);
    let options = ListTasksOptionsBuilder::new().filters(&filters).build();
    docker.list_tasks(Some(options)).await.map_err(|e| api(format!("list the tasks of {service}"), e))
}

async fn nodes(docker: &Docker) -> Result<HashMap<String, Node>, Failure> {
    let list = docker.list_nodes(None).await.map_err(|e| api("list the swarm's nodes".into(), e))?;
    Ok(list.into_iter().filter_map(|n| Some((n.id.clone()?, n))).collect())
}

async fn remove_service(docker: &Docker, name: &str) -> Result<(), String> {
    match docker.delete_service(name).await {
        Ok(()) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(format!("remove service {name}: {e}")),
    }
}

/// Waits until `replicas` tasks run (and, with `port`, publish it), and
/// returns their upstreams. A service Swarm cannot run is removed and the
/// reason returned: nothing of it ever got traffic.
async fn wait_running(docker: &Docker, plan: &ServicePlan<'_>) -> Result<Vec<String>, Failure> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let tasks = tasks(docker, &plan.name).await?;
        if let Some(reason) = cannot_run(&plan.name, &tasks, &plan.constraints) {
            if let Err(e) = remove_service(docker, &plan.name).await {
                tracing::warn!(error = %e, "removing a service Swarm cannot run");
            }
            return Err(Failure::new(reason));
        }
        let needed = usize::try_from(plan.replicas).unwrap_or(usize::MAX);
        match plan.publish {
            // The nodes (for their addresses) only once enough replicas run.
            Some(port) if running(&tasks) >= needed => {
                let found = upstreams(&tasks, &nodes(docker).await?, port);
                if found.len() >= needed {
                    return Ok(found);
                }
            }
            None if running(&tasks) >= needed => return Ok(Vec::new()),
            _ => {}
        }
        if Instant::now() >= deadline {
            let states: Vec<String> = tasks
                .iter()
                .filter(|t| wanted(t))
                .map(|t| {
                    let s = t.status.as_ref();
                    let state = s.and_then(|s| s.state).map(|s| s.to_string()).unwrap_or_default();
                    let err = s.and_then(|s| s.err.clone().or(s.message.clone())).unwrap_or_default();
                    format!("replica {}: {state} ({err})", t.slot.unwrap_or(0))
                })
                .collect();
            return Err(Failure::new(format!(
                "{} of {} replicas of {} run after {}",
                running(&tasks),
                plan.replicas,
                plan.name,
                docker::human(START_TIMEOUT)
            ))
            .with_details(states));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

async fn deploy_web(ctx: &DeploymentContext, env: &Settings) -> Result<WebContainerStarted, Failure> {
    let web = AppConfig::from_value(&ctx.config).map_err(Failure::new)?.web;
    let docker = docker::connect().await?;
    let plan = ServicePlan {
        name: service_name(ctx, &Role::Web),
        image: image_reference(&docker, ctx).await?,
        cmd: None,
        env,
        labels: docker::labels(ctx, &Role::Web.to_string()),
        replicas: web.replicas.max(1),
        limits: web.limits(),
        constraints: web.hosts.clone(),
        publish: Some(web.port),
    };
    ensure_service(&docker, service_spec(&plan)).await?;
    let upstreams = wait_running(&docker, &plan).await?;
    let host_port = upstreams.first().and_then(|u| u.rsplit_once(':')?.1.parse().ok()).unwrap_or_default();
    Ok(WebContainerStarted { container: plan.name, host_port, host: "swarm".into(), upstreams, warnings: Vec::new() })
}

async fn start_processes(ctx: &DeploymentContext, env: &Settings) -> Result<Vec<ProcessContainer>, Failure> {
    let config = AppConfig::from_value(&ctx.config).map_err(Failure::new)?;
    if config.processes.is_empty() {
        return Ok(Vec::new());
    }
    let docker = docker::connect().await?;
    let image = image_reference(&docker, ctx).await?;
    let mut started = Vec::new();
    let mut names = Vec::new();
    for (name, process) in &config.processes {
        let role = Role::Process { name: name.clone(), replica: 0 };
        let plan = ServicePlan {
            // `<...>-<name>`: one service for all the type's replicas.
            name: service_name(ctx, &role).trim_end_matches("-0").to_string(),
            image: image.clone(),
            cmd: Some(process.command.clone()),
            env,
            labels: docker::labels(ctx, name),
            replicas: process.replicas,
            limits: process.limits(),
            constraints: config.web.hosts.clone(),
            publish: None,
        };
        ensure_service(&docker, service_spec(&plan)).await?;
        wait_running(&docker, &plan).await.map_err(|f| Failure::new(format!("process `{name}`: {}", f.reason)).with_details(f.details))?;
        for replica in 1..=process.replicas {
            started.push(ProcessContainer { process: name.clone(), replica, container: format!("{}.{replica}", plan.name) });
        }
        names.push(plan.name);
    }
    // As on one engine: every replica must keep running for the start window.
    tokio::time::sleep(super::processes::START_WINDOW).await;
    let nodes = nodes(&docker).await?;
    for name in &names {
        let failed = failures(&tasks(&docker, name).await?, &nodes);
        if !failed.is_empty() {
            let window = docker::human(super::processes::START_WINDOW);
            return Err(Failure::new(format!("service {name}: {} within {window} of starting", failed.join("; "))));
        }
    }
    Ok(started)
}

/// Every replica answers the health path healthily, settled as on one
/// engine (`health_check::Settling`), and no replica failed meanwhile.
async fn health(ctx: &DeploymentContext) -> Result<HealthCheckPassed, Failure> {
    let web = AppConfig::from_value(&ctx.config).map_err(Failure::new)?.web;
    let urls: Vec<String> = ctx.upstreams().iter().map(|u| format!("http://{u}{}", web.health_path)).collect();
    if urls.is_empty() {
        return Err(Failure::new("no web replica recorded for this deployment; the deploy step must run before the health check"));
    }
    let service = ctx.web_container.clone().unwrap_or_else(|| service_name(ctx, &Role::Web));
    let docker = docker::connect().await?;
    let started = Instant::now();
    let deadline = started + web.health_timeout.0;
    let mut settling = Settling::new(web.min_ready.0);
    let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
    let mut attempts = 0;
    loop {
        attempts += 1;
        let answers = join_all(urls.iter().map(|u| get_status(u, PROBE_TIMEOUT))).await;
        let bad: Vec<String> = urls
            .iter()
            .zip(&answers)
            .filter_map(|(url, a)| match a {
                Ok(s) if (200..400).contains(s) => None,
                Ok(s) => Some(format!("GET {url}: status {s}")),
                Err(e) => Some(format!("GET {url}: {e}")),
            })
            .collect();
        let status = answers.iter().find_map(|a| a.as_ref().ok().copied()).unwrap_or(0);
        let settled = settling.record(bad.is_empty(), started.elapsed());
        let failed = failures(&tasks(&docker, &service).await?, &nodes(&docker).await?);
        if !failed.is_empty() {
            return Err(Failure::new(format!("service {service}: {} during the health check", failed.join("; "))));
        }
        if settled {
            let elapsed_ms = started.elapsed().as_millis() as u64;
            return Ok(HealthCheckPassed { path: web.health_path, status, attempts, elapsed_ms });
        }
        if Instant::now() >= deadline {
            return Err(Failure::new(format!(
                "not every replica of {service} answered {} with 2xx or 3xx within web.health_timeout ({}; {attempts} attempts)",
                web.health_path,
                docker::human(web.health_timeout.0)
            ))
            .with_details(bad));
        }
        let delay =
            if settling.healthy_for(started.elapsed()).is_some() { super::health_check::SETTLE_EVERY } else { backoff.next_delay() };
        tokio::time::sleep(delay.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// Until the watch ends, a replica that fails (exits, is rejected) fails
/// the release. A node lost is not the release's fault: Swarm places its
/// replicas again and the route follows. The routers' error counts judge
/// the answers (`RouterErrorsObserved`), as on one engine.
async fn watch(ctx: &DeploymentContext) -> Result<ReleaseWatched, Failure> {
    let until = ctx.watch_until.ok_or_else(|| Failure::new("the watch has no end recorded (no ReleaseWatchStarted)"))?;
    let service = ctx.web_container.clone().unwrap_or_else(|| service_name(ctx, &Role::Web));
    let docker = docker::connect().await?;
    let started = Instant::now();
    let mut looks = 0;
    loop {
        looks += 1;
        let failed = failures(&tasks(&docker, &service).await?, &nodes(&docker).await?);
        if !failed.is_empty() {
            return Err(Failure::new(format!("service {service}: {} after the traffic switch", failed.join("; "))));
        }
        let left = (until - chrono::Utc::now()).to_std().unwrap_or_default();
        if left.is_zero() {
            let watched_ms = started.elapsed().as_millis() as u64;
            return Ok(ReleaseWatched { watched_ms, probes: looks, failed_probes: 0, containers: vec![service] });
        }
        tokio::time::sleep(left.min(WATCH_EVERY)).await;
    }
}

/// Removes the deployment's services (by label: a command cannot name
/// another deployment's service) and its local containers (release
/// commands) as the single engine does.
async fn remove(deployment_id: Uuid, named: &[String], grace: Option<Duration>) -> Result<Vec<String>, Failure> {
    let docker = docker::connect().await?;
    let filters = HashMap::from([("label", vec![format!("{}={deployment_id}", docker::LABEL_DEPLOYMENT)])]);
    let options = ListServicesOptionsBuilder::new().filters(&filters).build();
    let services = docker.list_services(Some(options)).await.map_err(|e| api(format!("list the services of {deployment_id}"), e))?;
    let names: Vec<String> = services.into_iter().filter_map(|s| s.spec?.name).collect();
    let errors: Vec<String> =
        join_all(names.iter().map(|n| remove_service(&docker, n))).await.into_iter().filter_map(Result::err).collect();
    if !errors.is_empty() {
        return Err(Failure::new(format!("{} of {} services could not be removed", errors.len(), names.len())).with_details(errors));
    }
    // The named services and their tasks (`name.N`) are gone with them.
    let local: Vec<String> = named.iter().filter(|n| !names.iter().any(|s| n == &s || n.starts_with(&format!("{s}.")))).cloned().collect();
    let mut gone = cleanup::remove(deployment_id, &local, grace).await?;
    gone.extend(names);
    gone.sort();
    Ok(gone)
}

/// A task as the swarm watcher's decisions take it (`slipway_core::replicas`). Pure.
pub fn replica(task: &Task, nodes: &HashMap<String, Node>) -> Replica {
    let node = task.node_id.as_ref().and_then(|id| nodes.get(id));
    let node_up = node.and_then(|n| n.status.as_ref()).and_then(|s| s.state) == Some(NodeState::READY);
    let address = node.and_then(node_address).unwrap_or_default();
    let status = task.status.as_ref();
    let failed = matches!(state_of(task), Some(TaskState::FAILED | TaskState::REJECTED))
        .then(|| status.and_then(|s| s.err.clone()).filter(|e| !e.is_empty()).unwrap_or_else(|| "failed".into()));
    let ports = status.and_then(|s| s.port_status.as_ref()).and_then(|p| p.ports.as_ref());
    let published = ports.into_iter().flatten().find_map(|p| p.published_port);
    // Not yet on a node Swarm knows (new, pending, or assigned to a node
    // no longer listed), or pending with Swarm's reason why not.
    let waiting = matches!(state_of(task), Some(TaskState::NEW | TaskState::ALLOCATED | TaskState::PENDING | TaskState::ASSIGNED));
    let err = status.and_then(|s| s.err.clone()).filter(|e| !e.is_empty());
    let unplaced = (wanted(task) && waiting && (node.is_none() || (state_of(task) == Some(TaskState::PENDING) && err.is_some())))
        .then(|| err.or_else(|| status.and_then(|s| s.message.clone())).unwrap_or_default());
    Replica {
        task: task.id.clone().unwrap_or_default(),
        slot: task.slot.and_then(|s| u64::try_from(s).ok()).unwrap_or(0),
        upstream: published.filter(|_| !address.is_empty()).map(|p| format!("{address}:{p}")),
        node: address,
        node_up,
        wanted: wanted(task),
        running: state_of(task) == Some(TaskState::RUNNING),
        failed,
        unplaced,
    }
}

/// One service of a release, and its replicas, as the swarm watcher sees it.
#[derive(Debug, Clone)]
pub struct ServiceLook {
    pub name: String,
    pub deployment: Uuid,
    /// `web`, or the process type's name.
    pub role: String,
    /// The replicas it asks for.
    pub wanted: u32,
    pub replicas: Vec<Replica>,
}

/// The services of `deployments` and their tasks, in three calls to the manager.
pub async fn look(docker: &Docker, deployments: &BTreeSet<Uuid>) -> Result<Vec<ServiceLook>, Failure> {
    if deployments.is_empty() {
        return Ok(Vec::new());
    }
    let filters = HashMap::from([("label", vec![docker::LABEL_DEPLOYMENT.to_string()])]);
    let options = ListServicesOptionsBuilder::new().filters(&filters).build();
    let services = docker.list_services(Some(options)).await.map_err(|e| api("list the services".into(), e))?;
    let nodes = nodes(docker).await?;
    let all = docker.list_tasks(None).await.map_err(|e| api("list the tasks".into(), e))?;
    let mut looks = Vec::new();
    for service in services {
        let (Some(id), Some(spec)) = (service.id, service.spec) else { continue };
        let labels = spec.labels.unwrap_or_default();
        let Some(deployment) = labels.get(docker::LABEL_DEPLOYMENT).and_then(|d| d.parse::<Uuid>().ok()) else { continue };
        if !deployments.contains(&deployment) {
            continue;
        }
        let wanted = spec.mode.and_then(|m| m.replicated).and_then(|r| r.replicas).and_then(|r| u32::try_from(r).ok()).unwrap_or(0);
        let replicas = all.iter().filter(|t| t.service_id.as_deref() == Some(id.as_str())).map(|t| replica(t, &nodes)).collect();
        let role = labels.get(docker::LABEL_ROLE).cloned().unwrap_or_default();
        looks.push(ServiceLook { name: spec.name.unwrap_or(id), deployment, role, wanted, replicas });
    }
    Ok(looks)
}

/// One node of the swarm as `slipway hosts` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HostRow {
    pub id: String,
    pub hostname: String,
    pub address: String,
    /// `ready`, `down`, `disconnected`, `unknown`.
    pub state: String,
    /// `active`, `pause`, `drain`.
    pub availability: String,
    /// `manager (leader)`, `manager`, `worker`.
    pub role: String,
    pub labels: std::collections::BTreeMap<String, String>,
    /// What runs there: `<service>.<slot>` of every task meant to run on it.
    pub tasks: Vec<String>,
}

/// The swarm's nodes and what runs on each, from a manager's engine.
pub async fn hosts() -> Result<Vec<HostRow>, Failure> {
    let docker = docker::connect().await?;
    let nodes = nodes(&docker).await?;
    let services = docker.list_services(None).await.map_err(|e| api("list the services".into(), e))?;
    let names: HashMap<String, String> = services.into_iter().filter_map(|s| Some((s.id?, s.spec?.name?))).collect();
    let all = docker.list_tasks(None).await.map_err(|e| api("list the tasks".into(), e))?;
    let mut rows: Vec<HostRow> = nodes
        .values()
        .map(|n| {
            let id = n.id.clone().unwrap_or_default();
            let spec = n.spec.as_ref();
            let leader = n.manager_status.as_ref().and_then(|m| m.leader).unwrap_or(false);
            let role = match (spec.and_then(|s| s.role).map(|r| r.to_string()).unwrap_or_default().as_str(), leader) {
                ("manager", true) => "manager (leader)".to_string(),
                (other, _) => other.to_string(),
            };
            let mut tasks: Vec<String> = all
                .iter()
                .filter(|t| t.node_id.as_deref() == Some(id.as_str()) && wanted(t))
                .map(|t| {
                    let service = t.service_id.as_ref().and_then(|s| names.get(s)).cloned().unwrap_or_else(|| "?".into());
                    let state = state_of(t).map(|s| s.to_string()).unwrap_or_default();
                    format!("{service}.{} ({state})", t.slot.unwrap_or(0))
                })
                .collect();
            tasks.sort();
            HostRow {
                id: id.chars().take(12).collect(),
                hostname: n.description.as_ref().and_then(|d| d.hostname.clone()).unwrap_or_default(),
                address: node_address(n).unwrap_or_default(),
                state: n.status.as_ref().and_then(|s| s.state).map(|s| s.to_string()).unwrap_or_default(),
                availability: spec.and_then(|s| s.availability).map(|a| a.to_string()).unwrap_or_default(),
                role,
                labels: spec.and_then(|s| s.labels.clone()).unwrap_or_default().into_iter().collect(),
                tasks,
            }
        })
        .collect();
    rows.sort_by(|a, b| (&a.address, &a.id).cmp(&(&b.address, &b.id)));
    Ok(rows)
}

/// Why an operation on a node named by the operator did not happen.
#[derive(Debug)]
pub enum NodeError {
    /// The name picks no node (or is empty).
    NotFound(String),
    /// The name picks more than one node.
    Ambiguous(String),
    /// The Docker engine could not be reached: trying later may work.
    Unavailable(String),
    /// Docker failed.
    Failed(Failure),
}

impl From<Failure> for NodeError {
    fn from(failure: Failure) -> Self {
        NodeError::Failed(failure)
    }
}

impl From<docker::DockerError> for NodeError {
    fn from(e: docker::DockerError) -> Self {
        match e {
            docker::DockerError::Unreachable { .. } => NodeError::Unavailable(e.to_string()),
            docker::DockerError::Api { .. } => NodeError::Failed(e.into()),
        }
    }
}

/// A node named by its host name, id (or a prefix of it) or address.
fn find_node<'a>(nodes: &'a HashMap<String, Node>, name: &str) -> Result<&'a Node, NodeError> {
    if name.trim().is_empty() {
        return Err(NodeError::NotFound("the node name is empty: give a host name, id or address (slipway hosts lists them)".into()));
    }
    let mut found = nodes.values().filter(|n| {
        let hostname = n.description.as_ref().and_then(|d| d.hostname.as_deref());
        hostname == Some(name) || n.id.as_deref().is_some_and(|id| id.starts_with(name)) || node_address(n).as_deref() == Some(name)
    });
    match (found.next(), found.next()) {
        (Some(node), None) => Ok(node),
        (Some(_), Some(_)) => Err(NodeError::Ambiguous(format!("more than one swarm node is named {name:?}: give its id (slipway hosts)"))),
        (None, _) => Err(NodeError::NotFound(format!("no swarm node is named {name:?} (slipway hosts lists them)"))),
    }
}

/// A node whose availability changed: its id, host name, address, and what it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvailabilityChange {
    pub id: String,
    pub hostname: String,
    pub address: String,
    pub previous: String,
    /// What of Slipway's Swarm meant to run there before the change.
    pub tasks: Vec<String>,
}

/// Sets the availability (`drain`, `active`, `pause`) of node `name` (its
/// host name, id or address). Idempotent: a node already so is left alone.
pub async fn set_availability(name: &str, availability: Availability) -> Result<AvailabilityChange, NodeError> {
    let docker = docker::connect().await?;
    let nodes = nodes(&docker).await?;
    let node = find_node(&nodes, name)?;
    let id = node.id.clone().unwrap_or_default();
    let mut spec = node.spec.clone().unwrap_or_default();
    let change = AvailabilityChange {
        id: id.clone(),
        hostname: node.description.as_ref().and_then(|d| d.hostname.clone()).unwrap_or_default(),
        address: node_address(node).unwrap_or_default(),
        previous: spec.availability.map(|a| a.to_string()).unwrap_or_default(),
        tasks: tasks_on(&id).await?,
    };
    if spec.availability == Some(availability) {
        return Ok(change);
    }
    spec.availability = Some(availability);
    let version = node.version.as_ref().and_then(|v| v.index).and_then(|i| i64::try_from(i).ok()).unwrap_or(0);
    let options = UpdateNodeOptionsBuilder::new().version(version).build();
    docker.update_node(&id, spec, options).await.map_err(|e| api(format!("set node {name} to {availability}"), e))?;
    Ok(change)
}

/// What Swarm's placement constraints can name about `node`.
fn facts(node: &Node) -> NodeFacts {
    let description = node.description.as_ref();
    let spec = node.spec.as_ref();
    NodeFacts {
        id: node.id.clone().unwrap_or_default(),
        hostname: description.and_then(|d| d.hostname.clone()).unwrap_or_default(),
        role: spec.and_then(|s| s.role).map(|r| r.to_string()).unwrap_or_default(),
        os: description.and_then(|d| d.platform.as_ref()?.os.clone()).unwrap_or_default(),
        arch: description.and_then(|d| d.platform.as_ref()?.architecture.clone()).unwrap_or_default(),
        labels: spec.and_then(|s| s.labels.clone()).unwrap_or_default().into_iter().collect(),
        engine_labels: description.and_then(|d| d.engine.as_ref()?.labels.clone()).unwrap_or_default().into_iter().collect(),
    }
}

/// Slipway's services with replicas on node `name` that no other node
/// could take if it were drained (ready, active, satisfying the service's
/// placement): each as `<service> (placement [..])`. Draining would leave
/// them nowhere to run, so `hosts drain` refuses.
pub async fn stranded_by_drain(name: &str) -> Result<Vec<String>, NodeError> {
    let docker = docker::connect().await?;
    let nodes = nodes(&docker).await?;
    let target = find_node(&nodes, name)?.id.clone().unwrap_or_default();
    let others: Vec<NodeFacts> = nodes
        .values()
        .filter(|n| n.id.as_deref() != Some(target.as_str()))
        .filter(|n| n.status.as_ref().and_then(|s| s.state) == Some(NodeState::READY))
        .filter(|n| n.spec.as_ref().and_then(|s| s.availability) == Some(Availability::ACTIVE))
        .map(facts)
        .collect();
    let tasks = docker.list_tasks(None).await.map_err(|e| api("list the tasks".into(), e))?;
    let there: BTreeSet<String> =
        tasks.iter().filter(|t| t.node_id.as_deref() == Some(target.as_str()) && wanted(t)).filter_map(|t| t.service_id.clone()).collect();
    let services = docker.list_services(None).await.map_err(|e| api("list the services".into(), e))?;
    let mut stranded = Vec::new();
    for service in services {
        let (Some(id), Some(spec)) = (service.id, service.spec) else { continue };
        let name = spec.name.clone().unwrap_or_default();
        if !there.contains(&id) || !name.starts_with("slipway-") {
            continue;
        }
        let constraints = spec.task_template.and_then(|t| t.placement?.constraints).unwrap_or_default();
        // An attribute this cannot judge counts as met: Swarm decides then.
        if !others.iter().any(|n| satisfies(n, &constraints) != Some(false)) {
            stranded.push(format!("{name} (placement {constraints:?})"));
        }
    }
    Ok(stranded)
}

/// The tasks of Slipway's services Swarm still means to run on node `id`,
/// as `<service>.<slot>`.
pub async fn tasks_on(node_id: &str) -> Result<Vec<String>, Failure> {
    let rows = hosts().await?;
    Ok(rows.into_iter().filter(|h| node_id.starts_with(&h.id)).flat_map(|h| h.tasks).filter(|t| t.starts_with("slipway-")).collect())
}

#[async_trait]
impl Containers for Swarm {
    async fn deploy(&self, command: &RunStep, env: &Settings, _rt: &Runtime) -> Event {
        match deploy_web(&command.context, env).await {
            Ok(started) => Event::WebContainerStarted(started),
            Err(failure) => failure.for_command(command),
        }
    }

    async fn processes(&self, command: &RunStep, env: &Settings, _rt: &Runtime) -> Event {
        match start_processes(&command.context, env).await {
            Ok(containers) => Event::ProcessesStarted(ProcessesStarted { containers }),
            Err(failure) => failure.for_command(command),
        }
    }

    async fn health_check(&self, command: &RunStep, _env: &Settings, _rt: &Runtime) -> Event {
        match health(&command.context).await {
            Ok(passed) => Event::HealthCheckPassed(passed),
            Err(failure) => failure.for_command(command),
        }
    }

    async fn watch(&self, command: &RunStep, _env: &Settings, _rt: &Runtime) -> Event {
        match watch(&command.context).await {
            Ok(watched) => Event::ReleaseWatched(watched),
            Err(failure) => failure.for_command(command),
        }
    }

    async fn remove_containers(&self, command: &RemoveContainers) -> Event {
        match remove(command.deployment_id, &command.containers, None).await {
            Ok(containers) => Event::ContainersRemoved(ContainersRemoved { containers }),
            Err(failure) => failure.into_event(Step::Cleanup, 0),
        }
    }

    async fn retire(&self, command: &RetireRelease) -> Event {
        tokio::time::sleep(Duration::from_secs(command.drain_seconds)).await;
        match remove(command.deployment_id, &command.containers, Some(cleanup::STOP_GRACE)).await {
            Ok(containers) => Event::ContainersRemoved(ContainersRemoved { containers }),
            Err(failure) => failure.into_event(Step::Retire, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(project: &str) -> DeploymentContext {
        serde_json::from_value(serde_json::json!({
            "deployment_id": "0190a3c1-0000-7000-8000-0000000000ab",
            "project": project, "environment": "live", "repository": "r", "git_ref": "main",
        }))
        .expect("a valid context")
    }

    fn task(slot: i64, node: &str, state: &str, port: Option<i64>, err: Option<&str>) -> Task {
        serde_json::from_value(serde_json::json!({
            "Slot": slot, "NodeID": node, "DesiredState": "running",
            "Status": {
                "State": state, "Err": err,
                "PortStatus": { "Ports": port.map(|p| vec![
                    serde_json::json!({"Protocol": "tcp", "TargetPort": 80, "PublishedPort": p, "PublishMode": "host"}),
                    serde_json::json!({"Protocol": "tcp", "TargetPort": 80, "PublishedPort": p, "PublishMode": "host"}),
                ]) },
            },
        }))
        .expect("a task")
    }

    fn nodes() -> HashMap<String, Node> {
        let node = |id: &str, addr: &str, label: Option<&str>| -> (String, Node) {
            let labels = label.map(|l| serde_json::json!({ "slipway.address": l })).unwrap_or(serde_json::json!({}));
            let node = serde_json::json!({ "ID": id, "Spec": { "Labels": labels }, "Status": { "State": "ready", "Addr": addr } });
            (id.to_string(), serde_json::from_value(node).expect("a node"))
        };
        HashMap::from([node("a", "10.0.0.2", None), node("b", "10.0.0.3", Some("192.0.2.3")), node("m", "0.0.0.0", None)])
    }

    #[test]
    fn service_names_fit_docker_and_keep_the_release_id() {
        let short = service_name(&ctx("shop"), &Role::Web);
        assert_eq!(short, "slipway-shop-live-0190a3c10000700080000000000000ab-web");
        let long = service_name(&ctx("a-very-long-project-name-indeed"), &Role::Web);
        assert!(long.len() <= 63, "{long}");
        assert!(long.ends_with("-0190a3c10000700080000000000000ab-web"), "{long}");
    }

    #[test]
    fn upstreams_are_every_running_replicas_node_and_port() {
        let tasks = vec![
            task(1, "a", "running", Some(30001), None),
            task(2, "b", "running", Some(30002), None),
            task(3, "a", "starting", None, None),
        ];
        assert_eq!(upstreams(&tasks, &nodes(), 80), vec!["10.0.0.2:30001", "192.0.2.3:30002"]);
        assert_eq!(running(&tasks), 2);
    }

    #[test]
    fn a_task_is_a_replica_on_its_nodes_address() {
        let mut nodes = nodes();
        let mut t = task(2, "b", "running", Some(30002), None);
        t.id = Some("t2".into());
        let r = replica(&t, &nodes);
        assert_eq!((r.task.as_str(), r.slot, r.node.as_str(), r.node_up, r.wanted, r.running), ("t2", 2, "192.0.2.3", true, true, true));
        assert_eq!(r.upstream.as_deref(), Some("192.0.2.3:30002"));
        assert!(r.serving());
        // Its node down: not serving, whatever the node last said of the task.
        nodes.get_mut("b").and_then(|n| n.status.as_mut()).expect("a status").state = Some(NodeState::DOWN);
        assert!(!replica(&t, &nodes).serving());
        let failed = replica(&task(1, "a", "failed", None, Some("task: non-zero exit (3)")), &nodes);
        assert_eq!((failed.failed.as_deref(), failed.upstream), (Some("task: non-zero exit (3)"), None));
        assert_eq!((r.unplaced, failed.unplaced), (None, None));
    }

    #[test]
    fn a_task_on_no_node_is_unplaced_with_swarm_s_reason() {
        let reason = "no suitable node (scheduling constraints not satisfied on 3 nodes)";
        let stuck = replica(&task(1, "", "pending", None, Some(reason)), &nodes());
        assert_eq!((stuck.unplaced.as_deref(), stuck.node.as_str(), stuck.serving()), (Some(reason), "", false));
        // Assigned to a node no longer listed: no node runs it either.
        assert_eq!(replica(&task(2, "gone", "assigned", None, None), &nodes()).unplaced.as_deref(), Some(""));
        // On its way on a node (assigned, starting), or not wanted: placed, or no replica.
        assert_eq!(replica(&task(3, "a", "assigned", None, None), &nodes()).unplaced, None);
        assert_eq!(replica(&task(3, "a", "starting", None, None), &nodes()).unplaced, None);
        let mut shut = task(1, "", "pending", None, Some(reason));
        shut.desired_state = Some(TaskState::SHUTDOWN);
        assert_eq!(replica(&shut, &nodes()).unplaced, None);
    }

    #[test]
    fn a_placement_no_node_satisfies_is_said_plainly() {
        let tasks = vec![task(1, "", "pending", None, Some("no suitable node (scheduling constraints not satisfied on 3 nodes)"))];
        let why = cannot_run("svc", &tasks, &["node.labels.region==eu".into()]).expect("cannot run");
        assert_eq!(
            why,
            "no node can run svc replica 1: Swarm says \"no suitable node (scheduling constraints not satisfied on 3 nodes)\" \
             (the placement [web] hosts = [\"node.labels.region==eu\"])"
        );
        assert_eq!(cannot_run("svc", &[task(1, "a", "pending", None, None)], &[]), None);
    }

    #[test]
    fn failed_replicas_name_their_node_and_error() {
        let tasks = vec![task(2, "a", "failed", None, Some("task: non-zero exit (3)")), task(1, "b", "running", Some(1), None)];
        assert_eq!(failures(&tasks, &nodes()), vec!["replica 2 on 10.0.0.2 task: non-zero exit (3)"]);
    }

    #[test]
    fn the_spec_publishes_in_host_mode_with_limits_and_placement() {
        let env = Settings::from([("A".to_string(), "1".to_string())]);
        let plan = ServicePlan {
            name: "svc".into(),
            image: "reg/app@sha256:1".into(),
            cmd: None,
            env: &env,
            labels: HashMap::new(),
            replicas: 3,
            limits: Limits { memory: Some(slipway_proto::config::Memory(64 << 20)), cpus: None, pids: Some(50) },
            constraints: vec!["node.labels.region==eu".into()],
            publish: Some(8080),
        };
        let spec = service_spec(&plan);
        let json = serde_json::to_value(&spec).expect("json");
        assert_eq!(json["Mode"]["Replicated"]["Replicas"], 3);
        assert_eq!(json["EndpointSpec"]["Ports"][0]["PublishMode"], "host");
        assert_eq!(json["EndpointSpec"]["Ports"][0]["TargetPort"], 8080);
        assert_eq!(json["TaskTemplate"]["Resources"]["Limits"]["MemoryBytes"], 64 << 20);
        assert_eq!(json["TaskTemplate"]["Placement"]["Constraints"][0], "node.labels.region==eu");
        assert_eq!(json["TaskTemplate"]["ContainerSpec"]["Env"][0], "A=1");
        assert_eq!(json["TaskTemplate"]["RestartPolicy"]["Condition"], "any");
    }
}
