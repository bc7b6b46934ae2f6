//! Builds the eBPF object (ebpf/programs) with nightly for bpfel-unknown-none and drops it in
//! OUT_DIR, where `loader.rs` embeds it.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "edgeplane-ebpf")
        .ok_or_else(|| anyhow!("edgeplane-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("edgeplane-ebpf manifest has no parent"))?
        .as_str()
        .to_owned();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "edgeplane-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
