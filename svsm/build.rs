//! Link the bare-metal image with its own linker script (load address, PVH note), and
//! build the C half of the runtime libtpms and libcrypto need (csupport/libc.c).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    if std::env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-none") {
        println!("cargo:rustc-link-arg-bins=-T{dir}/linker.ld");
        println!("cargo:rustc-link-arg-bins=--no-pie");
        // Freestanding, position-dependent (the image is linked at 16 MiB), and free of
        // SSE so the shim itself never touches the guest's vector registers.
        cc::Build::new()
            .compiler("gcc")
            .file("csupport/libc.c")
            .flag("-ffreestanding")
            .flag("-fno-stack-protector")
            .flag("-fno-pic")
            .flag("-mgeneral-regs-only")
            .flag("-mno-red-zone")
            .flag("-std=c11")
            .warnings(true)
            .extra_warnings(true)
            .flag("-Werror")
            .flag("-Wno-unused-parameter")
            .compile("bulwark_libc");
    }
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rerun-if-changed=csupport/libc.c");
}
