//! Engine helpers for the swarm runtime: is this a manager, the overlay network, how
//! tasks must name the image, and where a task's node is reached.

use std::collections::HashMap;

use bollard::models::{LocalNodeState, NetworkCreateRequest};
use bollard::query_parameters::InspectNetworkOptions;
use bollard::Docker;

use crate::provisioner::docker::engine::{message, status};
use crate::provisioner::docker::LABEL_MANAGED_BY;
use crate::provisioner::ProvisionError;

/// This engine's node id, if it is an active swarm manager (only managers create
/// services); otherwise says how to make it one.
pub(super) async fn manager_node(docker: &Docker) -> Result<String, ProvisionError> {
    let info = docker
        .info()
        .await
        .map_err(|e| ProvisionError::Other(format!("asking the engine about its swarm: {e}")))?;
    let swarm = info.swarm.unwrap_or_default();
    let state = swarm.local_node_state.unwrap_or(LocalNodeState::EMPTY);
    match (state, swarm.control_available, swarm.node_id) {
        (LocalNodeState::ACTIVE, Some(true), Some(id)) if !id.is_empty() => Ok(id),
        (LocalNodeState::ACTIVE, ..) => Err(ProvisionError::Other(
            "this engine is a swarm worker: services are created on a manager; point \
             DOCKER_HOST at one"
                .into(),
        )),
        (state, ..) => Err(ProvisionError::Other(format!(
            "this engine is not in a swarm (state '{state}'): run `docker swarm init \
             --advertise-addr 127.0.0.1` for a one-node swarm, or use --runtime docker"
        ))),
    }
}

/// Creates the replicas' overlay network unless it exists: attachable, so that a
/// balancer in a plain container can join it and reach replicas by name. A network of
/// that name with another driver is refused: replicas could not join it.
pub(super) async fn ensure_overlay(
    docker: &Docker,
    network: &str,
    instance: &str,
) -> Result<(), ProvisionError> {
    let other = |what: &str, e: &bollard::errors::Error| {
        ProvisionError::Other(format!("{what} network {network}: {}", message(e)))
    };
    match docker
        .inspect_network(network, None::<InspectNetworkOptions>)
        .await
    {
        Ok(n) if n.driver.as_deref() == Some("overlay") => return Ok(()),
        Ok(n) => {
            return Err(ProvisionError::Other(format!(
                "network {network} exists with driver {}; the swarm runtime needs an overlay \
                 network: pass another --network",
                n.driver.as_deref().unwrap_or("?")
            )))
        }
        Err(e) if status(&e) == Some(404) => {}
        Err(e) => return Err(other("inspecting", &e)),
    }
    let request = NetworkCreateRequest {
        name: network.to_string(),
        driver: Some("overlay".into()),
        attachable: Some(true),
        labels: Some(HashMap::from([(
            LABEL_MANAGED_BY.to_string(),
            instance.to_string(),
        )])),
        ..Default::default()
    };
    match docker.create_network(request).await {
        Ok(_) => {
            log::info!("created overlay network {network}");
            Ok(())
        }
        // Another balancer created it in the meantime.
        Err(e) if status(&e) == Some(409) => Ok(()),
        Err(e) => Err(other("creating", &e)),
    }
}

/// How tasks must name `image` so that no node tries a registry for it: by digest
/// (`name@sha256:…`) when it came from one, so other nodes can pull it too; else by
/// its local id (`sha256:…`), which Swarm never pulls. Naming a local-only
/// `lb-server:latest` by tag makes every task start try the registry first, which
/// with none reachable fails (slowly, when the network drops packets) before the
/// local image is used.
pub(super) async fn image_reference(docker: &Docker, image: &str) -> Result<String, String> {
    let inspected = docker.inspect_image(image).await.map_err(|e| {
        if status(&e) == Some(404) {
            format!("image {image} not found: run `make images` first")
        } else {
            format!("inspecting image {image}: {}", message(&e))
        }
    })?;
    let repo = image.rsplit_once(':').map_or(image, |(r, tag)| {
        // `host:port/name` has a colon that is not a tag's.
        if tag.contains('/') {
            image
        } else {
            r
        }
    });
    let digest = inspected
        .repo_digests
        .unwrap_or_default()
        .into_iter()
        .find(|d| d.split_once('@').is_some_and(|(r, _)| r == repo));
    digest
        .or(inspected.id)
        .ok_or_else(|| format!("the engine gave no id for image {image}"))
}

/// Where the balancer reaches a port published on node `node`: loopback for this
/// engine's own node, else the address the node advertises to the swarm.
pub(super) async fn node_host(docker: &Docker, node: &str, local: &str) -> Option<String> {
    if node == local {
        return Some("127.0.0.1".into());
    }
    let n = docker.inspect_node(node).await.ok()?;
    n.status?.addr.filter(|a| !a.is_empty() && a != "0.0.0.0")
}
