/* The header's version macros, dg_version() and dg_abi_version() agree with Cargo.toml.
 * The Makefile passes Cargo.toml's version as -DEXPECTED_MAJOR/MINOR/PATCH. */
#include "common.h"

#if !defined(EXPECTED_MAJOR) || !defined(EXPECTED_MINOR) || !defined(EXPECTED_PATCH)
#error "compile with -DEXPECTED_MAJOR=.. -DEXPECTED_MINOR=.. -DEXPECTED_PATCH=.. (from Cargo.toml)"
#endif

#if DG_VERSION_MAJOR != EXPECTED_MAJOR || DG_VERSION_MINOR != EXPECTED_MINOR || \
    DG_VERSION_PATCH != EXPECTED_PATCH
#error "DG_VERSION_MAJOR/MINOR/PATCH in include/diffgentor.h differ from Cargo.toml's version"
#endif

int main(void) {
    CHECK(DG_VERSION_MAJOR == EXPECTED_MAJOR, "DG_VERSION_MAJOR %d != Cargo.toml %d",
          (int)DG_VERSION_MAJOR, (int)EXPECTED_MAJOR);
    CHECK(DG_VERSION_MINOR == EXPECTED_MINOR, "DG_VERSION_MINOR %d != Cargo.toml %d",
          (int)DG_VERSION_MINOR, (int)EXPECTED_MINOR);
    CHECK(DG_VERSION_PATCH == EXPECTED_PATCH, "DG_VERSION_PATCH %d != Cargo.toml %d",
          (int)DG_VERSION_PATCH, (int)EXPECTED_PATCH);

    char expected[64];
    snprintf(expected, sizeof expected, "%d.%d.%d", (int)EXPECTED_MAJOR, (int)EXPECTED_MINOR,
             (int)EXPECTED_PATCH);
    const char *v = dg_version();
    CHECK(v != NULL, "dg_version() returned NULL");
    if (v != NULL) {
        CHECK(strcmp(v, expected) == 0, "dg_version() = \"%s\", expected \"%s\"", v, expected);
        CHECK(dg_version() == v, "dg_version() should return the same static string each call");
    }
    CHECK(dg_abi_version() == (uint32_t)DG_VERSION_MAJOR, "dg_abi_version() = %u, DG_VERSION_MAJOR = %d",
          (unsigned)dg_abi_version(), (int)DG_VERSION_MAJOR);
    return test_result("version");
}
