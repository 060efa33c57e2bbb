//! Engine helpers for the docker runtime: error decoding, the replicas' network, and
//! finding the container this process runs in.

use std::path::Path;

use bollard::errors::Error as DockerError;
use bollard::models::{ContainerInspectResponse, NetworkConnectRequest, NetworkCreateRequest};
use bollard::query_parameters::{InspectContainerOptions, InspectNetworkOptions};
use bollard::Docker;

use crate::provisioner::ProvisionError;

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
