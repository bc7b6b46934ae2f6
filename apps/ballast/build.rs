//! Writes the initialized image: BALLAST_MIB mebibytes (16 unless set) of bytes that are not
//! zero, so the linker keeps them as one data segment instead of leaving them to zeroed memory.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=BALLAST_MIB");
    let mib: usize = match env::var("BALLAST_MIB") {
        Ok(v) => v.parse().expect("BALLAST_MIB is a whole number of MiB"),
        Err(_) => 16,
    };
    assert!((1..=256).contains(&mib), "BALLAST_MIB is 1..=256");
    let image: Vec<u8> = (0..mib << 20).map(pristine).collect();
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    fs::write(out.join("ballast.bin"), image).unwrap();
    fs::write(out.join("ballast_mib.rs"), format!("{mib}")).unwrap();
}

// The same function as the guest's (src/main.rs): never zero, different from page to page.
fn pristine(offset: usize) -> u8 {
    let x = (offset as u32).wrapping_mul(2_654_435_761) >> 24;
    (x as u8) | 1
}
