// Declarations shared by the two translation units of odr_test.
#ifndef DG_CPP_TEST_ODR_HPP
#define DG_CPP_TEST_ODR_HPP

#include <diffgentor.hpp>

using odr_trampoline_t = bool (*)(const dg_progress_t *, void *);

dg::Images odr_generate_in_other_tu(const dg::Pipeline &pipe, std::uint32_t *progress_calls);
odr_trampoline_t odr_trampoline_in_other_tu();
void odr_throw_in_other_tu();

#endif
