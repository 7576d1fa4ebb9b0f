//! Health names beyond each gRPC service's own: what a probe asks a process about.

/// SERVING once a shard-worker has loaded a span, NOT_SERVING before and whenever it holds
/// none: its readiness (a Kubernetes `grpc` readiness probe asks for this service).
pub const WORKER_LOADED: &str = "neuroshard.worker.v1.Loaded";
