//! Embedding the host in a plugin platform: one runner for the process,
//! several tenants invoking at once, each with its own limit profile and
//! sandbox folder, bounded so one tenant cannot starve the others.
//!
//! ```sh
//! cargo run -p orders-host --example embed
//! ```

use std::time::Duration;

use orders_host::{Destination, Input, Invocation, Limits, Runner, RunnerConfig};

const ORDERS: &str = "order_id,region,amount,status\n\
                      1,north,250.00,completed\n\
                      2,south,\"$1,089.5\",completed\n\
                      3,north,12,Canceled\n\
                      4,east,-5,completed\n";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scratch = std::env::temp_dir().join(format!("orders-host-embed-{}", std::process::id()));
    // Built once: engine, sandbox roots, bounds. Cheap to clone into tasks.
    let runner = Runner::new(&RunnerConfig {
        sandbox_root: Some(scratch.join("sandboxes")),
        max_concurrent: 4,
        max_concurrent_per_tenant: 2,
        background_removal: true,
        ..RunnerConfig::default()
    })?;
    // Compiled once, instantiated per invocation.
    let pipeline = runner.bundled()?;
    // A tenant on a tight budget.
    runner.set_tenant_limits(
        "free-tier",
        Limits { timeout: Duration::from_secs(5), memory: "64MiB".parse()?, ..Limits::default() },
    )?;

    let mut tasks = tokio::task::JoinSet::new();
    for (n, tenant) in ["acme", "free-tier", "acme", "globex", "free-tier", "globex"].into_iter().enumerate() {
        let (runner, pipeline) = (runner.clone(), pipeline.clone());
        let archive = scratch.join(format!("{tenant}-{n}.tar"));
        tasks.spawn(async move {
            let invocation = Invocation::new(pipeline.clone(), Input::Bytes(ORDERS.as_bytes().to_vec()))
                .tenant(tenant)
                .destination(Destination::Tar { path: archive, force: true });
            (tenant, runner.invoke(invocation).await)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (tenant, result) = joined?;
        match result {
            Ok(outcome) => {
                let report = &outcome.report;
                println!(
                    "{tenant:>9}: {} rows, {} accepted, {} rejected, guest {:?}, total {:?}, {} outputs",
                    report.rows,
                    report.accepted,
                    report.rejected,
                    outcome.timings.guest,
                    outcome.timings.total,
                    outcome.outputs.len()
                );
                for file in &outcome.outputs {
                    println!("           {:<18} {:>5} bytes  sha256 {}", file.name, file.bytes, &file.sha256[..16]);
                }
            }
            Err(err) => println!("{tenant:>9}: {} ({err})", err.outcome().name()),
        }
    }
    // Waits for background removals and reports any that failed.
    runner.shutdown()?;
    std::fs::remove_dir_all(&scratch)?;
    Ok(())
}
