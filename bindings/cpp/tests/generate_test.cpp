// Generation through the C++ binding on models/tiny-sd: the fox request (raw RGB written to
// $DG_FOX_RGB when set), progress reports, determinism, image lifetime, encoders, Params reuse,
// several images per request, moved-from handles, versions.
#include "check.hpp"

#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

static void test_fox(const std::string &model, const std::string &scratch) {
    std::vector<std::uint8_t> first;
    dg::Image survivor;  // outlives the request's Images, the Pipeline and the Runtime
    {
        dg::Runtime runtime(test::options());
        dg::Pipeline pipeline = runtime.load(model);
        dg::Params params = test::fox_params();

        std::vector<dg::Progress> seen;
        dg::Images images = pipeline.generate(params, [&](const dg::Progress &p) {
            seen.push_back(p);
            return true;
        });
        CHECK(seen.size() == 3, "expected 3 progress reports, got " + std::to_string(seen.size()));
        for (std::size_t i = 0; i < seen.size(); ++i) {
            CHECK(seen[i].step == i + 1, "step " + std::to_string(seen[i].step));
            CHECK(seen[i].total == 3, "total " + std::to_string(seen[i].total));
            CHECK(seen[i].elapsed_seconds >= 0.0, "negative elapsed time");
            if (i > 0) CHECK(seen[i].elapsed_seconds >= seen[i - 1].elapsed_seconds, "time ran back");
        }

        CHECK(images.size() == 1 && !images.empty(), "expected one image");
        CHECK(images.seed() == 42, "seed " + std::to_string(images.seed()));
        const dg::Image &img = images[0];
        CHECK(img.width() == 64 && img.height() == 64, "size");
        CHECK(img.channels() == 3, "channels");
        CHECK(img.stride() == 64 * 3, "stride");
        CHECK(img.size_bytes() == 64 * 64 * 3, "size_bytes");
        CHECK(img.pixels() != nullptr, "pixels");
        first = img.to_vector();
        CHECK(first.size() == 64 * 64 * 3, "to_vector size");

        if (const char *out = std::getenv("DG_FOX_RGB")) {
            std::ofstream f(out, std::ios::binary | std::ios::trunc);
            f.write(reinterpret_cast<const char *>(first.data()),
                    static_cast<std::streamsize>(first.size()));
            CHECK(f.good(), std::string("writing ") + out);
        }

        // Same request, no callback: same bytes; the Params object was only copied.
        dg::Images again = pipeline.generate(params);
        CHECK(again.front().to_vector() == first, "the fox is not deterministic");

        // Encoders and writers.
        std::vector<std::uint8_t> png = img.encode_png();
        CHECK(png.size() > 8 && std::memcmp(png.data(), "\x89PNG\r\n\x1a\n", 8) == 0, "PNG signature");
        std::vector<std::uint8_t> jpeg = img.encode_jpeg(85);
        CHECK(jpeg.size() > 2 && jpeg[0] == 0xFF && jpeg[1] == 0xD8, "JPEG signature");
        img.write_png(scratch + "/nested/fox.png");
        CHECK(test::read_file(scratch + "/nested/fox.png") == png, "write_png != encode_png");
        img.write_jpeg(scratch + "/fox.jpg", 85);
        CHECK(test::read_file(scratch + "/fox.jpg") == jpeg, "write_jpeg != encode_jpeg");

        // Iteration and copies share the pixels (no copy).
        std::size_t n = 0;
        for (const dg::Image &i : images) {
            CHECK(i.pixels() == img.pixels(), "iteration yields another image");
            ++n;
        }
        CHECK(n == 1, "iteration count");
        survivor = images.at(0);
        CHECK(survivor.pixels() == img.pixels(), "a copied Image must share the pixels");
        bool out_of_range = false;
        try {
            (void)images.at(1);
        } catch (const std::out_of_range &) {
            out_of_range = true;
        }
        CHECK(out_of_range, "Images::at(1) must throw std::out_of_range");
    }
    CHECK(survivor.to_vector() == first, "an Image must keep its pixels alive");
}

static void test_reuse_and_batches(const std::string &model) {
    dg::Runtime runtime(test::options());
    dg::Pipeline pipeline(runtime, model);
    dg::Params params = test::fox_params();
    std::vector<std::uint8_t> seed42 = pipeline.generate(params)[0].to_vector();

    params.seed(7);
    dg::Images seven = pipeline.generate(params);
    CHECK(seven.seed() == 7, "seed after reuse");
    CHECK(seven[0].to_vector() != seed42, "seed 7 gave seed 42's image");

    params.seed(42).num_images(2).size(32, 32).set("guidance_scale", "5.0");
    dg::Images two = pipeline.generate(params);
    CHECK(two.size() == 2, "num_images 2 gave " + std::to_string(two.size()));
    CHECK(two[0].width() == 32 && two[1].height() == 32, "size 32x32");
    CHECK(two[0].to_vector() != two[1].to_vector(), "the two images are equal");

    // A random seed is drawn and reported.
    dg::Params random;
    random.prompt("a red fox").steps(1);
    dg::Images r = pipeline.generate(random);
    dg::Params replay;
    replay.prompt("a red fox").steps(1).seed(r.seed());
    CHECK(pipeline.generate(replay)[0].to_vector() == r[0].to_vector(), "reported seed replays");

    // Moving transfers the handle; a moved-from object throws instead of passing NULL to C.
    dg::Params moved = std::move(params);
    moved.num_images(1);
    EXPECT_ERROR(params.steps(3), dg::ErrorCode::NullArg, "moved-from dg::Params");
    dg::Pipeline other = std::move(pipeline);
    CHECK(static_cast<bool>(other) && !pipeline, "moved Pipeline");
    EXPECT_ERROR(pipeline.generate(moved), dg::ErrorCode::NullArg, "moved-from dg::Pipeline");
    CHECK(other.generate(moved).size() == 1, "generate on the moved-to Pipeline");

    dg::Image empty;
    CHECK(empty.width() == 0 && empty.pixels() == nullptr && empty.to_vector().empty(), "empty Image");
    EXPECT_ERROR(empty.write_png("never.png"), dg::ErrorCode::NullArg, nullptr);
    dg::Images none;
    CHECK(none.empty() && none.size() == 0, "empty Images");
}

static void test_versions() {
    std::string header = std::to_string(DG_VERSION_MAJOR) + "." + std::to_string(DG_VERSION_MINOR) +
                         "." + std::to_string(DG_VERSION_PATCH);
    CHECK(dg::version() == header, "library " + dg::version() + " vs header " + header);
    CHECK(dg::abi_version() == DG_VERSION_MAJOR, "abi version");
}

int main(int argc, char **argv) {
    return test::run("generate_test", argc, argv, [](const std::string &model, const std::string &scratch) {
        test_versions();
        test_fox(model, scratch);
        test_reuse_and_batches(model);
    });
}
