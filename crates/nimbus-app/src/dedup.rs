//! Exactly-once mutations across reconnects.
//!
//! The npm client re-sends every mutation it has not seen completed when its socket
//! reconnects, with the same session ID and request ID — including mutations that did
//! run. The tenant remembers recent (session, request) pairs and answers a repeat with
//! the first run's response; a repeat arriving while the first run is still going waits
//! for it. Bounded: the oldest pair is forgotten when full.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::OnceCell;

use crate::error::AppError;
use crate::execute::{FunctionRequest, FunctionResponse};
use crate::tenant::Tenant;

type Key = (String, u64);

pub(crate) struct RecentRequests {
    entries: HashMap<Key, Arc<OnceCell<FunctionResponse>>>,
    order: VecDeque<Key>,
    capacity: usize,
}

impl RecentRequests {
    pub fn new(capacity: usize) -> Self {
        RecentRequests {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    fn cell(&mut self, key: Key) -> Arc<OnceCell<FunctionResponse>> {
        if let Some(cell) = self.entries.get(&key) {
            return cell.clone();
        }
        let cell = Arc::new(OnceCell::new());
        if self.capacity > 0 {
            while self.order.len() >= self.capacity {
                if let Some(oldest) = self.order.pop_front() {
                    self.entries.remove(&oldest);
                }
            }
            self.order.push_back(key.clone());
            self.entries.insert(key, cell.clone());
        }
        cell
    }
}

impl Tenant {
    /// Runs a request once per `(session_id, request_id)`: a repeat gets the first run's
    /// response (`replayed` = true). A run that failed before reaching the function
    /// (overload, ...) is not remembered, so a repeat runs it again.
    pub async fn run_once(
        &self,
        session_id: &str,
        request_id: u64,
        request: FunctionRequest,
    ) -> Result<(FunctionResponse, bool), AppError> {
        let cell = self
            .recent_requests
            .lock()
            .cell((session_id.to_string(), request_id));
        let mut ran = false;
        let response = cell
            .get_or_try_init(|| {
                ran = true;
                self.run(request)
            })
            .await?;
        Ok((response.clone(), !ran))
    }
}
