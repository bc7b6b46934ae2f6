//! Phase 6, drain: every worker finishes its in-flight requests (or hands its listener over),
//! then XDP is detached and the upgrade socket removed, unless a successor owns them now.

use anyhow::Context as _;
use tracing::info;

use crate::serve::Running;

pub fn drain(running: Running, handed_to: Option<u32>, unpin_on_exit: bool) -> anyhow::Result<()> {
    let Running {
        mut dp,
        workers,
        control,
        ..
    } = running;
    if let Some(w) = workers {
        let results = match handed_to {
            Some(_) => w.hand_over(),
            None => w.stop(),
        };
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(s) => info!(
                    worker = i,
                    accepted = s.accepted,
                    served = s.served,
                    "worker stopped"
                ),
                Err(e) => tracing::error!(worker = i, error = %format!("{e:#}"), "worker failed"),
            }
        }
    }
    if handed_to.is_some() {
        // The links, pins and the upgrade socket's path are the successor's now.
        dp.leave_attached();
        info!("handed over; exiting");
        return Ok(());
    }
    dp.detach_all();
    drop(dp);
    let _ = std::fs::remove_file(&control.upgrade_socket);
    if unpin_on_exit {
        let pin_dir = &control.pin_dir;
        std::fs::remove_dir_all(pin_dir)
            .with_context(|| format!("removing {}", pin_dir.display()))?;
        info!(pin_dir = %pin_dir.display(), "pins removed");
    }
    Ok(())
}
