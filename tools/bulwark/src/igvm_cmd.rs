//! `bulwark igvm build`: the SVSM as an IGVM file for QEMU (SEV-SNP, and native without
//! isolation). `bulwark igvm measure`: the launch digest (the attestation report's
//! MEASUREMENT) that file gives on SEV-SNP. Layout and use: docs/platforms/igvm.md.
//!
//! Exit status: 0 on success, 1 when a file cannot be built or measured, 2 on a usage error.

mod build;
mod cpuid;
mod elf;
mod kvm;
mod measure;
mod ovmf;
mod start;

use serde_json::json;
use std::io::Write;
use std::process::ExitCode;

const USAGE: &str = "usage: bulwark igvm build [--svsm ELF] --out FILE [--firmware OVMF.fd] [--vcpus N]
                         [--snp-policy HEX] [--json]
       bulwark igvm measure FILE [--vcpus N] [--json] [--pages FILE.json]

  build        the SVSM image (ELF, with the `igvm_entry32` symbol) as an IGVM file with an
               SEV-SNP and a native platform
    --svsm ELF        default: the release image in $CARGO_TARGET_DIR or ./target
                      (x86_64-unknown-none/release/bulwark-svsm; `cargo xtask igvm` builds it)
    --firmware FILE   guest firmware (OVMF with SEV metadata) loaded so it ends at 4 GiB; the
                      pages its metadata names are placed where it asks
    --vcpus N         the vCPUs you will give QEMU (-smp N); printed in the launch hint only,
                      the SVSM learns the count from QEMU
    --snp-policy HEX  the SNP guest policy in the file (default 0x30000)
  measure      the launch digest QEMU/KVM will produce for FILE on SEV-SNP: 96 hex digits;
               refuses a file QEMU/KVM would launch differently (docs/platforms/igvm.md)
    --vcpus N         vCPUs (default 1); each needs a VMSA in the file
    --pages FILE      also write the measured pages, in order, as JSON
  --json       print JSON";

/// Exit status 1 with a message, or 2 with the usage text.
enum Failure {
    Usage(String),
    Error(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Failure::Error(e)
    }
}

pub fn main(args: &[String]) -> ExitCode {
    let (who, result) = match args.first().map(String::as_str) {
        Some("build") => ("bulwark igvm build", build_cmd(&args[1..])),
        Some("measure") => ("bulwark igvm measure", measure_cmd(&args[1..])),
        Some("help" | "--help" | "-h") | None => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some(other) => ("bulwark igvm", Err(Failure::Usage(format!("unknown subcommand `{other}`")))),
    };
    match result {
        Ok(text) => {
            // A closed pipe (`| head`) is not an error worth reporting.
            let _ = writeln!(std::io::stdout().lock(), "{text}");
            ExitCode::SUCCESS
        }
        Err(Failure::Usage(e)) => {
            eprintln!("{who}: {e}\n\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Failure::Error(e)) => {
            eprintln!("{who}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Options: `--json` alone, the rest with one value; words without `--` are positional.
struct Args<'a> {
    values: Vec<(&'a str, &'a str)>,
    json: bool,
    positional: Vec<&'a str>,
}

impl<'a> Args<'a> {
    fn parse(args: &'a [String], known: &[&str]) -> Result<Self, Failure> {
        let mut out = Args { values: Vec::new(), json: false, positional: Vec::new() };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--json" => out.json = true,
                flag if known.contains(&flag) => {
                    let value = it.next().ok_or_else(|| Failure::Usage(format!("{flag} needs a value")))?;
                    out.values.push((flag, value));
                }
                flag if flag.starts_with("--") => return Err(Failure::Usage(format!("unknown option `{flag}`"))),
                word => out.positional.push(word),
            }
        }
        Ok(out)
    }

    fn get(&self, flag: &str) -> Option<&'a str> {
        self.values.iter().rev().find(|(f, _)| *f == flag).map(|(_, v)| *v)
    }

    fn vcpus(&self) -> Result<u32, Failure> {
        match self.get("--vcpus") {
            None => Ok(1),
            Some(n) => n
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| Failure::Usage(format!("--vcpus takes a number of at least 1, not `{n}`"))),
        }
    }
}

fn read(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{path}: {e}"))
}

fn parse_policy(text: &str) -> Result<u64, Failure> {
    let digits = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")).unwrap_or(text);
    let policy = u64::from_str_radix(digits, 16)
        .map_err(|_| Failure::Usage(format!("--snp-policy takes a hexadecimal number, not `{text}`")))?;
    // SNP firmware ABI: bit 17 is reserved, must be one; the PSP refuses the launch otherwise.
    if policy & (1 << 17) == 0 {
        return Err(Failure::Usage(format!("--snp-policy {policy:#x}: bit 17 must be set (SNP firmware ABI)")));
    }
    Ok(policy)
}

/// Where `cargo build --release -p bulwark-svsm --target x86_64-unknown-none` puts the
/// image, seen from the workspace root.
fn default_svsm_image() -> String {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    format!("{target}/x86_64-unknown-none/release/bulwark-svsm")
}

fn build_cmd(args: &[String]) -> Result<String, Failure> {
    let a = Args::parse(args, &["--svsm", "--out", "--firmware", "--vcpus", "--snp-policy"])?;
    if let Some(word) = a.positional.first() {
        return Err(Failure::Usage(format!("unexpected argument `{word}`")));
    }
    let default_svsm;
    let svsm = match a.get("--svsm") {
        Some(path) => path,
        None => {
            default_svsm = default_svsm_image();
            if !std::path::Path::new(&default_svsm).exists() {
                return Err(Failure::Usage(format!(
                    "no --svsm given and no SVSM image at {default_svsm}: build it with `cargo xtask igvm` \
                     or `cargo build --release -p bulwark-svsm --target x86_64-unknown-none`"
                )));
            }
            default_svsm.as_str()
        }
    };
    let out = a.get("--out").ok_or_else(|| Failure::Usage("--out FILE is required".into()))?;
    let vcpus = a.vcpus()?;
    let policy = a.get("--snp-policy").map(parse_policy).transpose()?.unwrap_or(0x30000);
    let firmware = a
        .get("--firmware")
        .map(|path| read(path).and_then(build::Firmware::new).map_err(|e| format!("{path}: {e}")))
        .transpose()?;

    let elf = read(svsm)?;
    let built = build::build(&elf, firmware.as_ref(), policy).map_err(|e| format!("{svsm}: {e}"))?;
    std::fs::write(out, &built.bytes).map_err(|e| format!("{out}: {e}"))?;
    Ok(if a.json { summary_json(out, &built, policy, vcpus)? } else { summary_text(out, &built, policy, vcpus) })
}

/// `build --json`.
fn summary_json(out: &str, built: &build::Built, policy: u64, vcpus: u32) -> Result<String, Failure> {
    let places = &built.places;
    let prevalidated: Vec<_> = places.prevalidated.iter().map(|(b, s)| json!({"base": b, "size": s})).collect();
    let v = json!({
        "out": out,
        "file_size": built.bytes.len(),
        "entry": built.entry,
        "snp": {
            "pages": built.snp_pages,
            "parameter_pages": built.parameter_pages,
            "policy": format!("{policy:#x}"),
            "secrets_page": places.secrets,
            "cpuid_page": places.cpuid,
            "calling_area": places.calling_area,
            "prevalidated": prevalidated,
        },
        "native": {"pages": built.native_pages, "parameter_pages": built.parameter_pages},
        "firmware": built.firmware.map(|(base, size)| json!({"base": base, "size": size})),
        "vcpus": vcpus,
    });
    serde_json::to_string_pretty(&v).map_err(|e| Failure::Error(e.to_string()))
}

/// `build`'s summary for people.
fn summary_text(out: &str, built: &build::Built, policy: u64, vcpus: u32) -> String {
    let places = &built.places;
    let firmware_text = match built.firmware {
        Some((base, size)) => format!("{} KiB at {base:#x}", size / 1024),
        None => "none".into(),
    };
    let calling_area = match places.calling_area {
        Some(ca) => format!("{ca:#x} (the firmware's)"),
        None => format!("{:#x} (made by the SVSM)", abi::igvm::DEFAULT_CALLING_AREA_GPA),
    };
    let prevalidated_text = match &places.prevalidated[..] {
        [] => "none".to_string(),
        ranges => ranges.iter().map(|(b, s)| format!("{b:#x}+{} KiB", s / 1024)).collect::<Vec<_>>().join(", "),
    };
    let mut text = format!(
        "wrote {out} ({} bytes)
  entry      {} = {:#x} (32-bit), ESI = {:#x} (boot information)
  SEV-SNP    {} pages, {} parameter pages, VMSA; guest policy {policy:#x}
             secrets page {:#x}, CPUID page {:#x}, calling area {calling_area}
             pre-validated for the firmware: {prevalidated_text}
  native     {} pages, {} parameter pages
  firmware   {firmware_text}
launch with QEMU 10 or later and -smp {vcpus} (docs/platforms/igvm.md); expected measurement:
  bulwark igvm measure {out}",
        built.bytes.len(),
        abi::igvm::ENTRY_SYMBOL,
        built.entry,
        abi::igvm::BOOT_INFO_GPA,
        built.snp_pages,
        built.parameter_pages,
        places.secrets,
        places.cpuid,
        built.native_pages,
        built.parameter_pages,
    );
    if vcpus > 1 {
        text.push_str(&format!(
            "\nnote: the file has a VMSA for vCPU 0 only; QEMU starts the others from its reset state, so \
             `bulwark igvm measure` cannot predict the measurement of a {vcpus}-vCPU launch"
        ));
    }
    text
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn measure_cmd(args: &[String]) -> Result<String, Failure> {
    let a = Args::parse(args, &["--vcpus", "--pages"])?;
    let [file] = a.positional[..] else {
        return Err(Failure::Usage("give exactly one IGVM file".into()));
    };
    let vcpus = a.vcpus()?;
    let parsed = measure::parse(&read(file)?).map_err(|e| format!("{file}: {e}"))?;
    let pages = measure::pages(&parsed, vcpus).map_err(|e| format!("{file}: {e}"))?;
    let measurement = hex(&measure::digest(&pages));

    if let Some(path) = a.get("--pages") {
        let list: Vec<_> = pages
            .iter()
            .map(|p| json!({"gpa": p.gpa, "page_type": measure::type_name(p.page_type), "contents_sha384": hex(&p.contents)}))
            .collect();
        let text = serde_json::to_string_pretty(&list).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("{path}: {e}"))?;
    }
    if !a.json {
        return Ok(measurement);
    }
    let count = |t| pages.iter().filter(|p| p.page_type == t).count();
    let zero = pages.iter().filter(|p| p.zero).count();
    use attest::launch_digest::PageType as T;
    let v = json!({
        "measurement": measurement,
        // `normal` counts pages with data, `zero` the NORMAL pages measured as zeros.
        "pages": {
            "normal": count(T::Normal) - zero,
            "zero": zero,
            "unmeasured": count(T::Unmeasured),
            "secrets": count(T::Secrets),
            "cpuid": count(T::Cpuid),
            "vmsa": count(T::Vmsa),
        },
        "vcpus": vcpus,
    });
    serde_json::to_string_pretty(&v).map_err(|e| Failure::Error(e.to_string()))
}
