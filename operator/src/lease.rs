//! Leader election with a `coordination.k8s.io/v1` Lease, so several operator replicas can
//! run and only one reconciles. [`next_step`] is the pure rule (take a free or expired
//! lease, renew our own, otherwise wait); [`Elector`] applies it with optimistic
//! concurrency (every write names the resource version it read, so two replicas racing for
//! an expired lease cannot both win).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

/// What to do with the lease as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nobody holds it, or its holder stopped renewing: take it.
    Acquire,
    /// It is ours: renew it.
    Renew,
    /// `holder` holds it for another `for_ms`.
    Wait { holder: String, for_ms: u64 },
}

/// The step for `me` given the lease's `spec` (none: no lease yet) at `now`.
pub fn next_step(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Step {
    let Some(spec) = spec else {
        return Step::Acquire;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder.is_empty() {
        return Step::Acquire;
    }
    if holder == me {
        return Step::Renew;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    match renewed.and_then(|at| at.checked_add(duration).ok()) {
        Some(expires) if expires > now => Step::Wait {
            holder: holder.to_string(),
            for_ms: expires.duration_since(now).as_millis().max(0) as u64,
        },
        _ => Step::Acquire,
    }
}

/// One replica's side of the election.
#[derive(Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("name", &self.name)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Elector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One round: takes or renews the lease if it may; whether this replica leads now.
    pub async fn try_lead(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.name).await?;
        match next_step(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            now,
        ) {
            Step::Wait { .. } => Ok(false),
            step => {
                let transitions = current
                    .as_ref()
                    .and_then(|l| l.spec.as_ref()?.lease_transitions)
                    .unwrap_or(0);
                let acquired = match (&step, current.as_ref().and_then(|l| l.spec.as_ref())) {
                    (Step::Renew, Some(spec)) => spec.acquire_time.clone(),
                    _ => Some(MicroTime(now)),
                };
                let spec = LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(self.duration.as_secs().max(1) as i32),
                    acquire_time: acquired,
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(if step == Step::Acquire && current.is_some() {
                        transitions + 1
                    } else {
                        transitions
                    }),
                    ..LeaseSpec::default()
                };
                self.write(current, spec).await
            }
        }
    }

    /// Creates or replaces the lease with `spec`, conditional on the version read; a lost
    /// race is "not leading", not an error.
    async fn write(&self, current: Option<Lease>, spec: LeaseSpec) -> Result<bool, kube::Error> {
        let result = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                lease.spec = Some(spec);
                let name = lease.name_any();
                self.api
                    .replace(&name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Lets the lease go (on shutdown), so another replica takes over at once.
    pub async fn release(&self) -> Result<(), kube::Error> {
        if let Some(mut lease) = self.api.get_opt(&self.name).await?
            && lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.identity.as_str())
        {
            if let Some(spec) = lease.spec.as_mut() {
                spec.holder_identity = None;
                spec.renew_time = None;
                spec.acquire_time = None;
            }
            let name = lease.name_any();
            match self
                .api
                .replace(&name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn held_by(holder: &str, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(at(renewed))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn free_expired_and_own_leases_are_taken_others_waited_for() {
        let now = at("2026-12-03T12:00:10Z");
        assert_eq!(next_step(None, "a", now), Step::Acquire);
        assert_eq!(
            next_step(Some(&LeaseSpec::default()), "a", now),
            Step::Acquire
        );
        let fresh = held_by("b", "2026-12-03T12:00:00Z");
        assert_eq!(
            next_step(Some(&fresh), "a", now),
            Step::Wait {
                holder: "b".into(),
                for_ms: 5_000
            }
        );
        assert_eq!(next_step(Some(&fresh), "b", now), Step::Renew);
        let stale = held_by("b", "2026-12-03T11:59:50Z");
        assert_eq!(next_step(Some(&stale), "a", now), Step::Acquire);
    }
}
