//! Coalescing: decisions in flight at the same moment share one script call.
//!
//! Callers hand their request to a queue; one task takes whatever is queued (up to a bound),
//! sends it as one engine call, and hands each caller its outcome. When nothing is in flight a
//! request goes at once, with no added wait. While a call is in flight the next batch keeps
//! filling, and leaves when that call returns or when it is full: so under load batches grow
//! by themselves (each call's fixed cost is shared by more decisions), and only full batches
//! add calls in flight, up to `max_in_flight`.
//!
//! With `pipeline` (on by default), a batch also leaves while exactly one call is in flight
//! once it holds as many requests as the call that returned last: under a steady load (callers
//! that ask again as soon as they are answered) the next call then waits in Redis's input while
//! the current one runs, instead of leaving only after its reply came back, so Redis is not idle
//! for the client's turnaround (Redis busy 0.93-0.97 instead of 0.69-0.73 of a core in
//! `keel bench limit`, and 1.2x the decisions per second: docs/bench/limit.md). When the
//! callers do not come back that fast, the batch waits for the call in flight as before.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

use crate::engine::{CheckRequest, LimitEngine, LimitError, Outcome};

/// Bounds of a [`Batcher`].
#[derive(Clone, Debug)]
pub struct BatcherOptions {
    /// Most checks in one engine call.
    pub max_batch: usize,
    /// Engine calls in flight at once (a call beyond the first leaves only with a full batch).
    pub max_in_flight: usize,
    /// Requests waiting in the queue before callers wait for room.
    pub queue: usize,
    /// Let a batch as large as the last returned call leave while one call is in flight (on by
    /// default).
    pub pipeline: bool,
}

impl Default for BatcherOptions {
    fn default() -> Self {
        Self {
            max_batch: 256,
            max_in_flight: 4,
            queue: 16_384,
            pipeline: true,
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
    let in_flight = Arc::new(AtomicUsize::new(0));
    let returned = Arc::new(Notify::new());
    // Requests of the call that returned last (pipelining's target batch size).
    let last_returned = Arc::new(AtomicUsize::new(usize::MAX));
    loop {
        let Some(first) = receiver.recv().await else {
            return;
        };
        let mut checks = first.0.checks.len();
        let mut batch = vec![first];
        let mut open = true;
        loop {
            while checks < options.max_batch {
                match receiver.try_recv() {
                    Ok(item) => {
                        checks += item.0.checks.len();
                        batch.push(item);
                    }
                    Err(_) => break,
                }
            }
            let flying = in_flight.load(Ordering::Acquire);
            if !open
                || checks >= options.max_batch
                || flying == 0
                || (options.pipeline
                    && flying == 1
                    && batch.len() >= last_returned.load(Ordering::Relaxed))
            {
                break;
            }
            // A call is in flight and this batch is not full: it waits for that call to return
            // (a stored notification only makes this loop look again) or for more requests.
            tokio::select! {
                _ = returned.notified() => {}
                item = receiver.recv() => match item {
                    Some(item) => {
                        checks += item.0.checks.len();
                        batch.push(item);
                    }
                    None => open = false,
                },
            }
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        metrics::histogram!("keel_limit_batch_size").record(batch.len() as f64);
        in_flight.fetch_add(1, Ordering::AcqRel);
        let (inner, in_flight, returned, last_returned) = (
            inner.clone(),
            in_flight.clone(),
            returned.clone(),
            last_returned.clone(),
        );
        tokio::spawn(async move {
            let (requests, replies): (Vec<CheckRequest>, Vec<Reply>) = batch.into_iter().unzip();
            let result = inner.check_batch(requests).await;
            last_returned.store(replies.len(), Ordering::Relaxed);
            in_flight.fetch_sub(1, Ordering::AcqRel);
            returned.notify_one();
            drop(permit);
            match result {
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
