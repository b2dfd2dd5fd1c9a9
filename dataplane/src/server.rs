//! Start-up and lifetime of a dataplane process.
//!
//! Order: counters → cached snapshot (if any) → one stream task per
//! controlplane → wait for a first snapshot (cache or stream) → bind UDP
//! workers and TCP → serve until SIGINT/SIGTERM. Sockets open only once there
//! is something to answer, so resolvers never see a half-ready server.

use std::sync::{atomic::AtomicBool, Arc};

use crate::{
    cache::SnapshotCacheFile,
    client::{self, Publisher},
    error::Result,
    metrics::{self, Metrics},
    settings::DataplaneSettings,
    tcp, udp,
};

/// Runs the dataplane until a termination signal.
pub async fn run(settings: DataplaneSettings) -> Result<()> {
    let workers = settings.worker_count();
    let metrics = Metrics::new(workers * settings.listen_addresses.len());
    let _ = metrics.limits.set(settings.limit_gauges());
    let publisher = Publisher::new(SnapshotCacheFile::new(&settings.cache_dir), metrics.clone());

    if let Some(addr) = settings.metrics_address {
        let (m, slot) = (metrics.clone(), publisher.handle_slot());
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, m, slot).await {
                tracing::error!(%addr, error = %e, "metrics endpoint failed");
            }
        });
    }

    publisher.load_cache();
    let node_id = if settings.node_id.is_empty() {
        format!("dataplane-{}", std::process::id())
    } else {
        settings.node_id.clone()
    };
    for uri in settings.controlplane_uris() {
        tokio::spawn(client::follow(uri, node_id.clone(), publisher.clone()));
    }

    let cookies = if settings.cookies.enabled {
        // A secret file that cannot be read or created must not keep the
        // server down: fall back to a secret of this process (cookies then
        // do not survive a restart nor work across anycast nodes).
        let file = settings.cookies.secret_file.as_deref();
        let master = match crate::cookie::load_secret(file) {
            Ok(secret) => secret,
            Err(e) => {
                tracing::warn!(
                    file = %file.map(|p| p.display().to_string()).unwrap_or_default(),
                    error = %e,
                    "cookie secret file unusable; using a secret of this process"
                );
                crate::cookie::load_secret(None).map_err(|e| crate::error::Error::Config {
                    file: "/dev/urandom".to_string(),
                    message: format!("cookie secret: {e}"),
                })?
            }
        };
        Some(crate::cookie::CookieConfig {
            master,
            rotate_secs: settings.cookies.rotate_secs.max(1),
        })
    } else {
        None
    };
    let handle = publisher.ready().await;
    let shutdown = Arc::new(AtomicBool::new(false));
    let _threads = udp::spawn_workers(
        &settings.listen_addresses,
        workers,
        handle.clone(),
        metrics.clone(),
        &settings.rrl,
        cookies,
        shutdown.clone(),
    )?;
    let tcp_open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for addr in &settings.listen_addresses {
        tcp::spawn_workers(
            *addr,
            workers,
            handle.clone(),
            metrics.clone(),
            settings.tcp,
            cookies,
            tcp_open.clone(),
        )?;
    }
    tracing::info!(
        addresses = ?settings.listen_addresses,
        workers,
        generation = handle.generation(),
        "dataplane answering"
    );
    wait_for_signal().await;
    tracing::info!("shutting down");
    shutdown.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
