// Debug aid: load + attach in a netns, configure steering, hold for N seconds.
fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mut dp = edgeplane::Dataplane::load(&edgeplane::LoadOptions {
        pin_dir: "/sys/fs/bpf/edgeplane-smoke".into(),
    })?;
    dp.attach_xdp(&args[1], edgeplane::XdpAttachMode::Native)?;
    let maps = dp.maps()?;
    maps.add_app("x", None, &[args[2].parse()?], 0)?;
    maps.set_worker_cpus(&[0, 1], 256)?;
    maps.set_worker_config(edgeplane_abi::WorkerConfig {
        n_workers: 2,
        load_threshold: 0,
        flags: 1,
        _pad: 0,
    })?;
    std::thread::sleep(std::time::Duration::from_secs(args[3].parse()?));
    println!("{:?}", maps.stats_reader()?.all()?);
    Ok(())
}
