//! Engine helpers for the docker runtime: error decoding, the replicas' network, and
//! finding the container this process runs in.

use std::path::Path;

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerInspectResponse, NetworkConnectRequest, NetworkCreateRequest};
use bollard::query_parameters::{InspectContainerOptions, InspectNetworkOptions};
use bollard::Docker;

use crate::config::DockerAddressing;
use crate::provisioner::ProvisionError;

/// A client of the local engine (or `DOCKER_HOST`). The engine may speak an older
/// API than bollard's default; negotiating avoids "client version too new" on every
/// call.
pub(in crate::provisioner) async fn connect() -> Result<Docker, ProvisionError> {
    let host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "the default socket".into());
    let unreachable = |e: DockerError| {
        ProvisionError::Other(format!("cannot reach the Docker engine at {host}: {e}"))
    };
    Docker::connect_with_defaults()
        .map_err(unreachable)?
        .negotiate_version()
        .await
        .map_err(unreachable)
}

/// How replicas are reached, once `auto` is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::provisioner) enum Reach {
    /// At a port published on the replica's host.
    Published,
    /// By name over `--network`.
    Network,
}

/// Resolves `addressing`: by name when this process runs in a container the engine
/// knows (which then joins `network`), else through published ports. `names` says
/// what must resolve here for names to work, for the warning when they may not.
pub(in crate::provisioner) async fn reach(
    docker: &Docker,
    addressing: DockerAddressing,
    network: &str,
    names: &str,
) -> Reach {
    let me = own_container(docker).await;
    let reach = match addressing {
        DockerAddressing::Published => Reach::Published,
        DockerAddressing::Network => Reach::Network,
        DockerAddressing::Auto if me.is_some() => Reach::Network,
        DockerAddressing::Auto => Reach::Published,
    };
    if reach == Reach::Network {
        match &me {
            Some(me) => join_network(docker, me, network).await,
            None => log::warn!(
                "--docker-addressing network, but this process is not in a container the \
                 engine knows: replicas are reachable only if {names} resolve here"
            ),
        }
    }
    reach
}

pub(super) fn in_container() -> bool {
    Path::new("/.dockerenv").exists() || Path::new("/run/.containerenv").exists()
}

/// The container this process runs in, as the engine sees it, or `None` on the host.
/// `/.dockerenv` alone is no proof (some VM images keep it from the container they
/// were built from), so the engine must know a container that matches our hostname.
pub(in crate::provisioner) async fn own_container(
    docker: &Docker,
) -> Option<ContainerInspectResponse> {
    let me = std::fs::read_to_string("/etc/hostname").ok()?;
    let me = me.trim();
    if me.is_empty() {
        return None;
    }
    let c = docker
        .inspect_container(me, None::<InspectContainerOptions>)
        .await
        .ok()?;
    // A container's default hostname is its short id; a chosen one (compose
    // `hostname:`) is only trusted from inside a container.
    let by_id = c.id.as_deref().is_some_and(|id| id.starts_with(me));
    let by_hostname =
        in_container() && c.config.as_ref().and_then(|c| c.hostname.as_deref()) == Some(me);
    (by_id || by_hostname).then_some(c)
}

pub(in crate::provisioner) fn status(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The engine's own message when there is one: it is the readable part.
pub(in crate::provisioner) fn message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Creates the replicas' network unless it exists.
pub(super) async fn ensure_network(docker: &Docker, network: &str) -> Result<(), ProvisionError> {
    match docker
        .inspect_network(network, None::<InspectNetworkOptions>)
        .await
    {
        Ok(_) => return Ok(()),
        Err(e) if status(&e) == Some(404) => {}
        Err(e) => {
            return Err(ProvisionError::Other(format!(
                "inspecting network {network}: {}",
                message(&e)
            )))
        }
    }
    let request = NetworkCreateRequest {
        name: network.to_string(),
        driver: Some("bridge".into()),
        ..Default::default()
    };
    match docker.create_network(request).await {
        Ok(_) => {
            log::info!("created network {network}");
            Ok(())
        }
        // Another balancer created it in the meantime.
        Err(e) if status(&e) == Some(409) => Ok(()),
        Err(e) => Err(ProvisionError::Other(format!(
            "creating network {network}: {}",
            message(&e)
        ))),
    }
}

/// A balancer in a container reaches replicas by name only from the same network:
/// join it when started without it (e.g. a plain `docker run`).
pub(in crate::provisioner) async fn join_network(
    docker: &Docker,
    me: &ContainerInspectResponse,
    network: &str,
) {
    let joined = me
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .is_some_and(|n| n.contains_key(network));
    let Some(id) = me.id.clone().filter(|_| !joined) else {
        return;
    };
    let request = NetworkConnectRequest {
        container: id,
        ..Default::default()
    };
    match docker.connect_network(network, request).await {
        Ok(()) => log::info!("joined network {network} to reach the replicas"),
        Err(e) => log::warn!(
            "this container is not on network {network} and could not join it: {}",
            message(&e)
        ),
    }
}
