//! The `zone-egress pki` verbs the tests and benchmarks use, on folders under `dir`.

use std::path::{Path, PathBuf};

fn at(dir: &Path, rel: &str) -> String {
    dir.join(rel).display().to_string()
}

/// `pki init-ca --out dir/out --name name`.
pub fn init_ca(dir: &Path, out: &str, name: &str) -> anyhow::Result<()> {
    crate::zone_egress(&["pki", "init-ca", "--out", &at(dir, out), "--name", name])?;
    Ok(())
}

/// `pki issue --ca dir/ca --spiffe spiffe [--dns name]... --out dir/out`.
pub fn issue(dir: &Path, ca: &str, spiffe: &str, dns: &[&str], out: &str) -> anyhow::Result<()> {
    let (ca, out) = (at(dir, ca), at(dir, out));
    let mut args = vec![
        "pki", "issue", "--ca", &ca, "--spiffe", spiffe, "--out", &out,
    ];
    for name in dns {
        args.extend(["--dns", name]);
    }
    crate::zone_egress(&args)?;
    Ok(())
}

/// `dir/out/cert.pem` and `dir/out/key.pem` in one file `dir/out.pem` (HAProxy's `crt`).
pub fn combined_pem(dir: &Path, out: &str) -> anyhow::Result<PathBuf> {
    let pem = format!(
        "{}{}",
        std::fs::read_to_string(dir.join(out).join("cert.pem"))?,
        std::fs::read_to_string(dir.join(out).join("key.pem"))?
    );
    let path = dir.join(format!("{out}.pem"));
    std::fs::write(&path, pem)?;
    Ok(path)
}
