/* C consumer of the diffgentor::c target: prints the library version. */
#include <diffgentor.h>
#include <stdio.h>

int main(void) {
    printf("consumer_c: diffgentor %s (ABI %u)\n", dg_version(), (unsigned)dg_abi_version());
    return dg_abi_version() == DG_VERSION_MAJOR ? 0 : 1;
}
