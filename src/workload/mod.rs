//! Workload adapters: the `Workload` port (`rollout::ports`) over a real platform. Today Kubernetes
//! Deployments (`k8s`), through the same lazily created client as the Kubernetes routers.

pub mod k8s;

pub use k8s::K8sWorkloads;
