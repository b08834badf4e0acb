// The second translation unit of odr_test: it includes the header too (twice: the include guard
// must hold), and instantiates the same inline functions as odr_main.cpp.
#include <diffgentor.hpp>
#include <diffgentor.hpp>

#include "odr.hpp"

dg::Images odr_generate_in_other_tu(const dg::Pipeline &pipe, std::uint32_t *progress_calls) {
    dg::Params p;
    p.prompt("a handwritten digit 3").seed(3).steps(2);
    return pipe.generate(p, [progress_calls](const dg::Progress &) {
        ++*progress_calls;
        return true;
    });
}

odr_trampoline_t odr_trampoline_in_other_tu() { return &dg::detail::progress_trampoline; }

void odr_throw_in_other_tu() { dg::detail::check(nullptr); dg::Params().set("nope", "1"); }
