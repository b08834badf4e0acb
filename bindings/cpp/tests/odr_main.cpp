// odr_test: diffgentor.hpp included by two translation units linked into one program. Linking
// at all proves every definition is inline; the checks prove both units share one definition
// (one address for the trampoline), and that objects and exceptions cross between them.
#include "check.hpp"
#include "odr.hpp"

int main(int argc, char **argv) {
    return test::run("odr_test", argc, argv, [](const std::string &model, const std::string &) {
        CHECK(odr_trampoline_in_other_tu() == &dg::detail::progress_trampoline,
              "two copies of an inline function");

        dg::Runtime rt(test::options());
        dg::Pipeline pipe = rt.load(model);
        std::uint32_t calls = 0;
        dg::Images images = odr_generate_in_other_tu(pipe, &calls);
        CHECK(calls == 2, "progress calls " + std::to_string(calls));
        CHECK(images.size() == 1 && images[0].width() == 16, "digits image is 16x16");

        dg::Params p;
        p.prompt("a handwritten digit 3").seed(3).steps(2);
        CHECK(pipe.generate(p)[0].to_vector() == images[0].to_vector(), "same request, same image");

        EXPECT_ERROR(odr_throw_in_other_tu(), dg::ErrorCode::InvalidArg, "nope");
    });
}
