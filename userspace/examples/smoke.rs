fn main() -> anyhow::Result<()> {
    let dp = edgeplane::Dataplane::load(&edgeplane::LoadOptions { pin_dir: "/sys/fs/bpf/edgeplane-smoke".into() })?;
    println!("loaded; maps at {}", dp.pin_dir().display());
    Ok(())
}
