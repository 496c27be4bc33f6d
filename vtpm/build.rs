//! Links libtpms when the `libtpms` feature is on. On the host the shared library carries
//! its own libcrypto; the bare-metal SVSM links both static archives and supplies the C
//! runtime they call (svsm/csupport).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_LIBTPMS").is_none() {
        return;
    }
    let libdir = "/usr/lib/x86_64-linux-gnu";
    let bare = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "none");
    if bare {
        for lib in ["libtpms.a", "libcrypto.a"] {
            let path = std::path::Path::new(libdir).join(lib);
            if !path.exists() {
                panic!("{} is missing: install libtpms-dev and libssl-dev", path.display());
            }
        }
        println!("cargo:rustc-link-search=native={libdir}");
        println!("cargo:rustc-link-lib=static=tpms");
        println!("cargo:rustc-link-lib=static=crypto");
    } else {
        println!("cargo:rustc-link-search=native={libdir}");
        println!("cargo:rustc-link-lib=dylib=tpms");
    }
}
