//! Builds the eBPF object (ebpf/programs) with nightly for bpfel-unknown-none and drops it in
//! OUT_DIR, where `loader.rs` embeds it.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    // Fuzz targets (fuzz/, `cargo fuzz` sets cfg(fuzzing)) parse configuration and never load the
    // programs; building them there would hand the fuzzer's instrumentation flags to the BPF
    // build. Empty objects stand in.
    println!("cargo::rustc-check-cfg=cfg(fuzzing)");
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
        for object in ["edgeplane", "baseline"] {
            std::fs::write(out.join(object), [])?;
        }
        return Ok(());
    }
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
