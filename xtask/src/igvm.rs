//! `cargo xtask igvm`: the SVSM image wrapped in an IGVM file for SEV-SNP hosts
//! (`bulwark igvm build`), and the launch measurement a verifier should expect
//! (`bulwark igvm measure`).

use crate::Result;
use crate::cli::IgvmOptions;
use crate::image;
use crate::shell::{cargo, exec, target_dir};

/// `cargo xtask igvm [--firmware FILE] [--out FILE]`.
pub fn run(options: &IgvmOptions) -> Result {
    let out = match &options.out {
        Some(out) => out.clone(),
        None => target_dir()?.join("bulwark.igvm"),
    };
    let image = image::build_svsm(false)?;
    let mut build = cargo()?;
    build.args(["run", "-q", "-p", "bulwark", "--", "igvm", "build", "--svsm"]).arg(&image).arg("--out").arg(&out);
    if let Some(f) = &options.firmware {
        build.args(["--firmware", f]);
    }
    exec("bulwark igvm build", &mut build)?;
    let mut measure = cargo()?;
    measure.args(["run", "-q", "-p", "bulwark", "--", "igvm", "measure"]).arg(&out);
    exec("bulwark igvm measure (the expected MEASUREMENT of a launch with -smp 1)", &mut measure)
}
