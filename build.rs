//! Gives the C shared library its SONAME, `libdiffgentor.so.<major>`, so programs linked against
//! one major version never load an incompatible one.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets the package version");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os != "macos" && os != "windows" && os != "ios" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libdiffgentor.so.{major}");
    }
}
