//! One shutdown signal for a whole process.
//!
//! Modelled on mini-redis: a role hands a clone of [`Shutdown`] to every task it spawns; each
//! task selects on [`Shutdown::wait`] and finishes its current unit of work before returning.

use tokio_util::sync::CancellationToken;

/// A cloneable, process-wide shutdown signal.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    /// A signal that fires only when [`Shutdown::trigger`] is called.
    pub fn new() -> Self {
        Self::default()
    }

    /// A signal that also fires on SIGTERM or SIGINT (Ctrl-C).
    pub fn on_signals() -> Self {
        let shutdown = Self::new();
        let trigger = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received, stopping");
            trigger.trigger();
        });
        shutdown
    }

    /// Fires the signal; every waiter wakes up.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// True once the signal has fired.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when the signal fires (immediately if it already has).
    pub async fn wait(&self) {
        self.token.cancelled().await
    }

    /// A child signal: fires with its parent, and may also be fired on its own.
    pub fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops this process");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn child_fires_with_parent() {
        let parent = Shutdown::new();
        let child = parent.child();
        assert!(!child.is_triggered());
        parent.trigger();
        child.wait().await;
        assert!(child.is_triggered());
    }
}
