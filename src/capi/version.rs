//! Versions: the header's `DG_VERSION_*` macros and the loaded library's version.
use std::ffi::c_char;

/// Major version of the header (and of the SONAME, `libdiffgentor.so.<major>`).
pub const DG_VERSION_MAJOR: u32 = 0;
/// Minor version of the header.
pub const DG_VERSION_MINOR: u32 = 1;
/// Patch version of the header.
pub const DG_VERSION_PATCH: u32 = 0;

// cbindgen only emits literal constants, so the numbers above are written out; these checks make
// the build fail when they drift from Cargo.toml's version (then update them and regenerate).
const _: () = assert!(
    DG_VERSION_MAJOR == parse_u32(env!("CARGO_PKG_VERSION_MAJOR")),
    "DG_VERSION_MAJOR differs from Cargo.toml's version"
);
const _: () = assert!(
    DG_VERSION_MINOR == parse_u32(env!("CARGO_PKG_VERSION_MINOR")),
    "DG_VERSION_MINOR differs from Cargo.toml's version"
);
const _: () = assert!(
    DG_VERSION_PATCH == parse_u32(env!("CARGO_PKG_VERSION_PATCH")),
    "DG_VERSION_PATCH differs from Cargo.toml's version"
);

/// Decimal digits to a number at compile time.
const fn parse_u32(digits: &str) -> u32 {
    let bytes = digits.as_bytes();
    let mut value = 0;
    let mut i = 0;
    while i < bytes.len() {
        assert!(bytes[i].is_ascii_digit(), "not a decimal number");
        value = value * 10 + (bytes[i] - b'0') as u32;
        i += 1;
    }
    value
}

/// The loaded library's version, "MAJOR.MINOR.PATCH" (a static string; never free it). Compare
/// with the header's `DG_VERSION_*` to detect a header/library mismatch.
#[no_mangle]
pub extern "C" fn dg_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The ABI version of the loaded library: the SONAME number, equal to `DG_VERSION_MAJOR`.
#[no_mangle]
pub extern "C" fn dg_abi_version() -> u32 {
    DG_VERSION_MAJOR
}
