//! Coalescing: decisions in flight at the same moment share one script call.
//!
//! Callers hand their request to a queue; one task takes whatever is queued (up to a bound),
//! sends it as one engine call, and hands each caller its outcome. A few calls run at once, so
//! while they are in flight the next batch fills up: under load batches grow by themselves, and
//! at low load a request goes alone with no added wait.

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::engine::{CheckRequest, LimitEngine, LimitError, Outcome};

/// Bounds of a [`Batcher`].
#[derive(Clone, Debug)]
pub struct BatcherOptions {
    /// Most checks in one engine call.
    pub max_batch: usize,
    /// Engine calls in flight at once.
    pub max_in_flight: usize,
    /// Requests waiting in the queue before callers wait for room.
    pub queue: usize,
}

impl Default for BatcherOptions {
    fn default() -> Self {
        Self {
            max_batch: 256,
            max_in_flight: 4,
            queue: 16_384,
        }
    }
}

type Reply = oneshot::Sender<Result<Outcome, LimitError>>;

/// An engine that coalesces concurrent requests into batched calls of an inner engine.
pub struct Batcher {
    sender: mpsc::Sender<(CheckRequest, Reply)>,
    inner_name: &'static str,
}

impl Batcher {
    /// Starts the batching task in front of `inner` (needs a tokio runtime).
    pub fn new(inner: Arc<dyn LimitEngine>, options: BatcherOptions) -> Self {
        let (sender, receiver) = mpsc::channel(options.queue.max(1));
        let inner_name = inner.name();
        tokio::spawn(run(inner, receiver, options));
        Self { sender, inner_name }
    }
}

async fn run(
    inner: Arc<dyn LimitEngine>,
    mut receiver: mpsc::Receiver<(CheckRequest, Reply)>,
    options: BatcherOptions,
) {
    let permits = Arc::new(Semaphore::new(options.max_in_flight.max(1)));
    loop {
        // Wait for room first: while every call is in flight, requests pile up in the queue and
        // the next batch takes them all.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = receiver.recv().await else {
            return;
        };
        let mut checks = first.0.checks.len();
        let mut batch = vec![first];
        while checks < options.max_batch {
            match receiver.try_recv() {
                Ok(item) => {
                    checks += item.0.checks.len();
                    batch.push(item);
                }
                Err(_) => break,
            }
        }
        metrics::histogram!("keel_limit_batch_size").record(batch.len() as f64);
        let inner = inner.clone();
        tokio::spawn(async move {
            let (requests, replies): (Vec<CheckRequest>, Vec<Reply>) = batch.into_iter().unzip();
            match inner.check_batch(requests).await {
                Ok(outcomes) => {
                    for (reply, outcome) in replies.into_iter().zip(outcomes) {
                        let _ = reply.send(Ok(outcome));
                    }
                }
                Err(error) => {
                    let shared = error.to_string();
                    let unavailable = error.is_unavailable();
                    let mut first = Some(error);
                    for reply in replies {
                        let error = first.take().unwrap_or_else(|| {
                            if unavailable {
                                LimitError::Redis(keel_redis::RedisError::UnexpectedReply(
                                    shared.clone(),
                                ))
                            } else {
                                LimitError::Closed
                            }
                        });
                        let _ = reply.send(Err(error));
                    }
                }
            }
            drop(permit);
        });
    }
}

impl LimitEngine for Batcher {
    fn check_batch<'a>(
        &'a self,
        requests: Vec<CheckRequest>,
    ) -> BoxFuture<'a, Result<Vec<Outcome>, LimitError>> {
        Box::pin(async move {
            let mut waiting = Vec::with_capacity(requests.len());
            for request in requests {
                let (tx, rx) = oneshot::channel();
                self.sender
                    .send((request, tx))
                    .await
                    .map_err(|_| LimitError::Closed)?;
                waiting.push(rx);
            }
            let mut outcomes = Vec::with_capacity(waiting.len());
            for rx in waiting {
                outcomes.push(rx.await.map_err(|_| LimitError::Closed)??);
            }
            Ok(outcomes)
        })
    }

    fn name(&self) -> &'static str {
        self.inner_name
    }
}
