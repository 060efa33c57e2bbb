//! The `static` runtime: a fixed list of servers that something else runs.
//!
//! Nothing is started or stopped; the servers are only balanced and health-checked.
//! A backend that stops answering leaves the ring and rejoins when it answers again.

use std::time::Duration;

use async_trait::async_trait;

use super::{ProvisionError, Provisioner, ReplicaSpec, Running};

/// Balances existing servers given with `--backend [NAME=]ADDR`.
pub struct StaticProvisioner {
    backends: Vec<Running>,
}

impl StaticProvisioner {
    /// Backends are named `Server1`… in order unless given as `NAME=ADDR`.
    pub fn new(specs: &[String]) -> Self {
        let backends = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let (hostname, address) = match spec.split_once('=') {
                    Some((name, addr)) => (name.to_string(), addr.to_string()),
                    None => (format!("Server{}", i + 1), spec.clone()),
                };
                Running {
                    hostname,
                    id: i as u32 + 1,
                    handle: address.clone(),
                    address,
                    grpc_address: None,
                }
            })
            .collect();
        StaticProvisioner { backends }
    }
}

#[async_trait]
impl Provisioner for StaticProvisioner {
    fn name(&self) -> &'static str {
        "static"
    }

    fn can_start(&self) -> bool {
        false
    }

    async fn discover(&self) -> Result<Vec<Running>, ProvisionError> {
        Ok(self.backends.clone())
    }

    async fn start(&self, spec: &ReplicaSpec) -> Result<Running, ProvisionError> {
        // A known backend "starts" by being itself again: it is waited on by heartbeat.
        self.backends
            .iter()
            .find(|b| b.hostname == spec.hostname)
            .cloned()
            .ok_or(ProvisionError::Unsupported("static"))
    }

    async fn stop(&self, _replica: &Running, _grace: Duration) -> Result<(), ProvisionError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_are_named_in_order_unless_named_explicitly() {
        let rt = StaticProvisioner::new(&["127.0.0.1:1".into(), "web=127.0.0.1:2".into()]);
        let names: Vec<_> = rt
            .backends
            .iter()
            .map(|b| (b.hostname.as_str(), b.id, b.address.as_str()))
            .collect();
        assert_eq!(
            names,
            vec![("Server1", 1, "127.0.0.1:1"), ("web", 2, "127.0.0.1:2")]
        );
    }
}
