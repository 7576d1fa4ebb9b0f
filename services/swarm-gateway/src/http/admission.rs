//! Admission of generation requests: at most `max_running_requests` run at once; a request
//! beyond them waits for a turn (first come, first served) for up to `max_wait_ms` while
//! fewer than `max_waiting_requests` others wait, and is otherwise answered 429 with
//! `Retry-After`. A turn is held until every choice of the request has finished, streamed or
//! not, or the client has gone.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;
use crate::config::Admission;

/// A running request's turn; released when the last clone is dropped.
pub type Turn = Arc<OwnedSemaphorePermit>;

/// The gate every generation request passes.
#[derive(Debug, Clone)]
pub struct AdmissionGate {
    running: Arc<Semaphore>,
    waiting: Arc<Semaphore>,
    max_running: u32,
    max_waiting: u32,
    max_wait: Duration,
    retry_after_s: u32,
}

impl AdmissionGate {
    pub fn new(config: &Admission) -> Self {
        Self {
            running: Arc::new(Semaphore::new(config.max_running_requests as usize)),
            waiting: Arc::new(Semaphore::new(config.max_waiting_requests as usize)),
            max_running: config.max_running_requests,
            max_waiting: config.max_waiting_requests,
            max_wait: Duration::from_millis(config.max_wait_ms),
            retry_after_s: config.retry_after_s,
        }
    }

    /// A turn now, or after waiting in line; 429 when the line is full or the wait too long.
    pub async fn admit(&self) -> Result<Turn, ApiError> {
        if let Ok(turn) = self.running.clone().try_acquire_owned() {
            return Ok(Arc::new(turn));
        }
        let Ok(_place_in_line) = self.waiting.clone().try_acquire_owned() else {
            return Err(self.busy());
        };
        match tokio::time::timeout(self.max_wait, self.running.clone().acquire_owned()).await {
            Ok(Ok(turn)) => Ok(Arc::new(turn)),
            _ => Err(self.busy()),
        }
    }

    /// Demand over capacity now, parts per million: running requests (and those waiting)
    /// over the running limit. What the inference price rises with.
    pub fn utilisation_ppm(&self) -> u64 {
        let running =
            u64::from(self.max_running).saturating_sub(self.running.available_permits() as u64);
        let waiting =
            u64::from(self.max_waiting).saturating_sub(self.waiting.available_permits() as u64);
        (running + waiting) * 1_000_000 / u64::from(self.max_running.max(1))
    }

    fn busy(&self) -> ApiError {
        ApiError::server_busy(
            format!(
                "The gateway is serving its limit of {} requests with {} more waiting; retry after {} s.",
                self.max_running, self.max_waiting, self.retry_after_s
            ),
            self.retry_after_s,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(running: u32, waiting: u32, wait_ms: u64) -> AdmissionGate {
        AdmissionGate::new(&Admission {
            max_running_requests: running,
            max_waiting_requests: waiting,
            max_wait_ms: wait_ms,
            retry_after_s: 3,
        })
    }

    #[tokio::test]
    async fn past_the_running_limit_without_a_line_is_429_with_retry_after() {
        let gate = gate(2, 0, 1);
        let a = gate.admit().await.unwrap();
        let _b = gate.admit().await.unwrap();
        let refused = gate.admit().await.unwrap_err();
        assert_eq!(refused.status.as_u16(), 429);
        assert_eq!(refused.retry_after_s, Some(3));
        drop(a);
        gate.admit().await.unwrap();
    }

    #[tokio::test]
    async fn a_waiting_request_gets_the_next_turn_or_gives_up() {
        let gate = gate(1, 1, 10_000);
        let first = gate.admit().await.unwrap();
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.admit().await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The line holds one: a third request is refused at once.
        assert_eq!(gate.admit().await.unwrap_err().status.as_u16(), 429);
        drop(first);
        waiting.await.unwrap().unwrap();
        // A wait that runs out is refused too.
        let short = self::gate(1, 1, 30);
        let _held = short.admit().await.unwrap();
        let started = std::time::Instant::now();
        assert_eq!(short.admit().await.unwrap_err().status.as_u16(), 429);
        assert!(started.elapsed() >= Duration::from_millis(30));
    }
}
