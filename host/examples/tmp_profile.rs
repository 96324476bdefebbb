use host::{Destination, Input, Limits, Runner, RunnerConfig};
use std::time::{Duration, Instant};
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let config = RunnerConfig { background_removal: true, ready_sandboxes: 8, ..RunnerConfig::default() };
    let runner = Runner::new(&config)?;
    let component =
        if args[1] == "bundled" { runner.bundled()? } else { runner.load_file(std::path::Path::new(&args[1]))? };
    let input = std::fs::read(&args[2])?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let limits = Limits::default();
        for round in 0..2 {
            let n = 3000u32;
            let mut t = host::Timings::default();
            let mut lat = Vec::new();
            for _ in 0..n {
                let s = Instant::now();
                let o = runner.run(&component, Input::Bytes(input.clone()), &limits, &Destination::Memory).await.expect("run");
                lat.push(s.elapsed());
                t.guest += o.timings.guest; t.instantiate += o.timings.instantiate; t.total += o.timings.total; t.collect += o.timings.collect; t.deliver += o.timings.deliver; t.input_copy += o.timings.input_copy; t.sandbox_create += o.timings.sandbox_create; t.sandbox_remove += o.timings.sandbox_remove;
            }
            lat.sort();
            if round == 1 {
                println!("p50 {:?} mean total {:?} inst {:?} call {:?} collect {:?} deliver {:?} copy {:?} create {:?} remove {:?}", lat[lat.len()/2], t.total/n, t.instantiate/n, (t.guest - t.instantiate)/n, t.collect/n, t.deliver/n, t.input_copy/n, t.sandbox_create/n, t.sandbox_remove/n);
            }
        }
        let _ = Duration::ZERO;
    });
    runner.shutdown()?;
    Ok(())
}
