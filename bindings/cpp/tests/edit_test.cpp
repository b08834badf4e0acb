// Editing through the C++ binding on models/tiny-sd, as tests/c/edit.c does through C: img2img
// (the request of `dg edit ... --seed 5 --steps 6 --scheduler euler_a --strength 0.5`; raw RGB
// written to $DG_EDIT_RGB when set), the pixel-buffer overloads (pointer + stride, vector,
// RGBA, dg::Image), inpainting with a padded grey mask, image guidance, a progressive plan,
// RuntimeOptions::set, and the error code of every editing misuse; then the same img2img request
// plus a mask on the inpainting package $DG_INPAINT_MODEL (the request of `dg edit --mask`; raw
// RGB written to $DG_INPAINT_RGB when set).
//
// The init image is $DG_EDIT_INIT_RGB and the mask $DG_EDIT_MASK_RGB (64x64 raw RGB; ctest passes
// target/c-test/out/edit-init.rgb and edit-mask.rgb, which `make c-test` decodes from
// tests/golden/edit/image_64x64.png and mask_64x64.png). Without them a synthetic gradient (and
// centre mask) is used and nothing is written to $DG_EDIT_RGB ($DG_INPAINT_RGB), since those
// pixels would not match the CLI's.
#include "check.hpp"

#include <cstdio>
#include <fstream>
#include <limits>
#include <string>
#include <utility>
#include <vector>

using dg::ErrorCode;

static constexpr std::uint32_t kSize = 64;
static constexpr std::size_t kRgbBytes = std::size_t{kSize} * kSize * 3;
static const char *const kPlan =
    "{\"stages\": [{\"width\": 64, \"height\": 64, \"steps\": 2},"
    " {\"width\": 96, \"height\": 96, \"steps\": 2, \"strength\": 0.5}]}";

struct Init {
    std::vector<std::uint8_t> rgb;
    bool golden = false;  // the file of `make c-test`, not the synthetic fallback
};

// The 64x64 raw RGB file $env names (golden), else an empty rgb to be filled synthetically.
static Init load_golden(const char *env, const char *what) {
    Init init;
    if (const char *path = std::getenv(env)) {
        init.rgb = test::read_file(path);
        if (init.rgb.size() == kRgbBytes) {
            init.golden = true;
            return init;
        }
        std::fprintf(stderr, "edit_test: %s is missing or not 64x64 RGB (run `make c-test`); "
                             "using a synthetic %s\n", path, what);
    }
    init.rgb.clear();
    return init;
}

// Writes bytes to the file $env names (for test.sh to compare with the CLI's pixels) when they
// come from the golden inputs; otherwise removes that file.
static void write_golden_output(const char *env, const std::vector<std::uint8_t> &bytes, bool golden) {
    if (const char *path = std::getenv(env)) {
        if (golden) {
            std::ofstream f(path, std::ios::binary | std::ios::trunc);
            f.write(reinterpret_cast<const char *>(bytes.data()),
                    static_cast<std::streamsize>(bytes.size()));
            CHECK(f.good(), std::string("writing ") + path);
        } else {
            std::remove(path);
        }
    }
}

static Init load_init() {
    Init init = load_golden("DG_EDIT_INIT_RGB", "init image");
    if (init.golden) return init;
    init.rgb.resize(kRgbBytes);
    for (std::uint32_t y = 0; y < kSize; ++y)
        for (std::uint32_t x = 0; x < kSize; ++x) {
            std::uint8_t *px = &init.rgb[(std::size_t{y} * kSize + x) * 3];
            px[0] = static_cast<std::uint8_t>(x * 4);
            px[1] = static_cast<std::uint8_t>(y * 4);
            px[2] = static_cast<std::uint8_t>(128 + (x ^ y));
        }
    return init;
}

// tests/c/edit.c's edit_params: "a red fox", seed 5, 6 steps, euler_a, strength 0.5.
static dg::Params edit_params(const Init &init) {
    dg::Params p;
    p.prompt("a red fox").seed(5).steps(6).scheduler("euler_a").strength(0.5);
    p.init_image(init.rgb.data(), kSize, kSize, 3, std::size_t{kSize} * 3);
    return p;
}

// 1-channel mask, rows padded to kSize + 7 bytes of 0xAB (must be ignored): the centre square
// (16..48) is white (repainted), the rest black (kept).
static std::vector<std::uint8_t> centre_mask(std::size_t stride) {
    std::vector<std::uint8_t> mask(stride * kSize, 0xAB);
    for (std::uint32_t y = 0; y < kSize; ++y)
        for (std::uint32_t x = 0; x < kSize; ++x)
            mask[y * stride + x] = (x >= 16 && x < 48 && y >= 16 && y < 48) ? 255 : 0;
    return mask;
}

static std::vector<std::uint8_t> test_img2img(const dg::Pipeline &pipeline, const Init &init) {
    dg::Params params = edit_params(init);
    std::vector<dg::Progress> seen;
    dg::Images images = pipeline.generate(params, [&](const dg::Progress &p) {
        seen.push_back(p);
        return true;
    });
    // strength 0.5 of 6 steps: the last 3 run.
    CHECK(seen.size() == 3, "img2img progress reports: " + std::to_string(seen.size()));
    CHECK(!seen.empty() && seen.back().step == seen.back().total, "last step == total");
    CHECK(images.size() == 1 && images.seed() == 5, "one image, seed 5");
    const dg::Image &img = images[0];
    CHECK(img.width() == kSize && img.height() == kSize, "output takes the init size");
    std::vector<std::uint8_t> out = img.to_vector();
    CHECK(out.size() == kRgbBytes, "img2img bytes");
    CHECK(out != init.rgb, "img2img returned the init image unchanged");

    write_golden_output("DG_EDIT_RGB", out, init.golden);

    // Deterministic, and the params were only copied.
    CHECK(pipeline.generate(params)[0].to_vector() == out, "img2img is not deterministic");

    // The same pixels through every overload: vector, padded stride, RGBA (alpha ignored).
    dg::Params from_vector = edit_params(init);
    from_vector.init_image(init.rgb, kSize, kSize, 3);
    CHECK(pipeline.generate(from_vector)[0].to_vector() == out, "vector overload differs");

    const std::size_t padded = std::size_t{kSize} * 3 + 5;
    std::vector<std::uint8_t> pad(padded * kSize, 0x5A), rgba(std::size_t{kSize} * kSize * 4);
    for (std::size_t y = 0; y < kSize; ++y)
        for (std::size_t x = 0; x < kSize; ++x)
            for (std::size_t c = 0; c < 3; ++c) {
                pad[y * padded + x * 3 + c] = init.rgb[(y * kSize + x) * 3 + c];
                rgba[(y * kSize + x) * 4 + c] = init.rgb[(y * kSize + x) * 3 + c];
                rgba[(y * kSize + x) * 4 + 3] = static_cast<std::uint8_t>(x * 7 + y);
            }
    dg::Params strided = edit_params(init);
    strided.init_image(pad.data(), kSize, kSize, 3, padded);
    CHECK(pipeline.generate(strided)[0].to_vector() == out, "padded stride differs");
    strided.init_image(pad, kSize, kSize, 3, padded);
    CHECK(pipeline.generate(strided)[0].to_vector() == out, "padded vector differs");
    dg::Params four = edit_params(init);
    four.init_image(rgba, kSize, kSize, 4);
    CHECK(pipeline.generate(four)[0].to_vector() == out, "RGBA (alpha ignored) differs");

    // A generated dg::Image as the init image of the next edit, equal to its copied bytes.
    dg::Params chain = edit_params(init);
    chain.init_image(img);
    dg::Params chain_copy = edit_params(init);
    chain_copy.init_image(out, kSize, kSize, 3);
    std::vector<std::uint8_t> second = pipeline.generate(chain)[0].to_vector();
    CHECK(second == pipeline.generate(chain_copy)[0].to_vector(), "Image overload differs");
    CHECK(second != out, "editing the edit changed nothing");

    // InstructPix2Pix's image guidance is ignored by a plain SD package: same pixels.
    dg::Params guided = edit_params(init);
    guided.image_guidance_scale(2.0f);
    CHECK(pipeline.generate(guided)[0].to_vector() == out, "image guidance changed tiny-sd");
    guided.set("image_guidance_scale", "1.25");
    EXPECT_ERROR(guided.set("image_guidance_scale", "lots"), ErrorCode::InvalidArg, "lots");

    // Without the init image the request-level strength has nothing to apply to.
    params.clear_init_image();
    EXPECT_ERROR(pipeline.generate(params), ErrorCode::InvalidArg, "strength needs an init image");
    return out;
}

static void test_inpaint(const dg::Pipeline &pipeline, const Init &init,
                         const std::vector<std::uint8_t> &img2img) {
    const std::size_t stride = kSize + 7;
    std::vector<std::uint8_t> mask = centre_mask(stride);
    dg::Params params = edit_params(init);
    params.mask(mask.data(), kSize, kSize, 1, stride);
    dg::Images images = pipeline.generate(params);
    CHECK(images.size() == 1, "one inpainted image");
    std::vector<std::uint8_t> out = images[0].to_vector();
    CHECK(out.size() == kRgbBytes, "inpainted bytes");
    CHECK(out != img2img, "the mask changed nothing");
    // (How near the kept region stays to the source is not checked: tiny-sd's random VAE does
    // not reconstruct it, so only "the mask changes the result" is meaningful here.)

    // The vector overload (same stride) gives the same pixels; the dg::Image overload works.
    dg::Params from_vector = edit_params(init);
    from_vector.mask(mask, kSize, kSize, 1, stride);
    CHECK(pipeline.generate(from_vector)[0].to_vector() == out, "mask vector overload differs");
    dg::Params from_image = edit_params(init);
    from_image.mask(images[0]);
    CHECK(pipeline.generate(from_image).size() == 1, "mask from a dg::Image");

    // Clearing the mask is plain img2img again.
    params.clear_mask();
    CHECK(pipeline.generate(params)[0].to_vector() == img2img, "clear_mask is not img2img");
}

// tests/c/edit.c's inpainting request: edit_params plus the mask (packed RGB, as `make c-test`'s
// png2rgb writes tests/golden/edit/mask_64x64.png) on the inpainting package (9-channel UNet).
static void test_inpaint_package(const dg::Runtime &runtime, const std::string &model,
                                 const Init &init, const std::vector<std::uint8_t> &img2img) {
    Init mask = load_golden("DG_EDIT_MASK_RGB", "mask");
    if (!mask.golden) {
        const std::vector<std::uint8_t> grey = centre_mask(kSize);
        for (std::uint8_t v : grey) mask.rgb.insert(mask.rgb.end(), 3, v);
    }
    const char *env = std::getenv("DG_INPAINT_MODEL");
    dg::Pipeline pipeline = runtime.load(env != nullptr ? std::string(env) : model + "-inpaint");
    dg::Params params = edit_params(init);
    params.mask(mask.rgb, kSize, kSize, 3);
    dg::Images images = pipeline.generate(params);
    CHECK(images.size() == 1 && images[0].width() == kSize && images[0].height() == kSize,
          "one 64x64 inpainted image");
    std::vector<std::uint8_t> out = images[0].to_vector();
    CHECK(out.size() == kRgbBytes && out != img2img, "inpainting package bytes");
    write_golden_output("DG_INPAINT_RGB", out, init.golden && mask.golden);
}

static void test_plan(const dg::Pipeline &pipeline) {
    dg::Params params;
    params.prompt("a red fox").seed(5).plan(kPlan);
    std::vector<dg::Progress> seen;
    dg::Images images = pipeline.generate(params, [&](const dg::Progress &p) {
        seen.push_back(p);
        return true;
    });
    CHECK(images[0].width() == 96 && images[0].height() == 96,
          "the plan's last stage sets the size");
    CHECK(!seen.empty() && seen.front().stage == 1 && seen.back().stage == 2 &&
              seen.back().stages == 2,
          "progress reports stage 1 then 2 of 2");
    CHECK(pipeline.generate(params)[0].to_vector() == images[0].to_vector(),
          "the plan is not deterministic");

    // A request-level strength would apply to stage 1, which has no init image: refused.
    params.strength(0.5);
    EXPECT_ERROR(pipeline.generate(params), ErrorCode::InvalidArg, "strength needs an init image");

    // clear_plan: a single stage at the package's size.
    dg::Params single;
    single.prompt("a red fox").seed(5).steps(2).plan(kPlan).clear_plan();
    dg::Images one = pipeline.generate(single, [&](const dg::Progress &p) {
        CHECK(p.stages == 1, "stages without a plan");
        return true;
    });
    CHECK(one[0].width() == kSize, "clear_plan left the plan's size");
}

static void test_runtime_options(const std::string &model, const dg::Pipeline &plain) {
    dg::RuntimeOptions opts = test::options();
    opts.set("sessions_per_graph", "2").set("no_spinning", "true").set("optimization", "all");
    dg::Runtime runtime(opts);
    dg::Pipeline pipeline = runtime.load(model);
    dg::Params fox = test::fox_params();
    CHECK(pipeline.generate(fox)[0].to_vector() == plain.generate(fox)[0].to_vector(),
          "sessions_per_graph 2 changed the fox");

    EXPECT_ERROR(dg::RuntimeOptions().set("warp_factor", "9"), ErrorCode::InvalidArg,
                 "warp_factor");
    EXPECT_ERROR(dg::RuntimeOptions().set("sessions_per_graph", "lots"), ErrorCode::InvalidArg,
                 "lots");
    EXPECT_ERROR(dg::RuntimeOptions().set("no_spinning", "maybe"), ErrorCode::InvalidArg, "maybe");
    EXPECT_ERROR(dg::RuntimeOptions().set("execution_provider", "warp-drive"),
                 ErrorCode::InvalidArg, "warp-drive");
    EXPECT_ERROR(dg::RuntimeOptions().set(std::string("no_spinning\0x", 13), "true"),
                 ErrorCode::InvalidArg, "NUL");
    // Out of range (1..=64): refused by set or at the latest by Runtime.
    EXPECT_ERROR(dg::Runtime(dg::RuntimeOptions().set("sessions_per_graph", "0")),
                 ErrorCode::InvalidArg, "sessions_per_graph");
    dg::RuntimeOptions moved = std::move(opts);
    EXPECT_ERROR(opts.set("no_spinning", "true"), ErrorCode::NullArg, "moved-from");
}

static void test_errors(const dg::Pipeline &pipeline, const Init &init) {
    const std::uint8_t *rgb = init.rgb.data();
    const std::size_t row = std::size_t{kSize} * 3;
    dg::Params p;
    EXPECT_ERROR(p.strength(0.0), ErrorCode::InvalidArg, "strength must be in (0, 1]");
    EXPECT_ERROR(p.strength(1.5), ErrorCode::InvalidArg, "strength must be in (0, 1]");
    EXPECT_ERROR(p.strength(std::numeric_limits<double>::quiet_NaN()), ErrorCode::InvalidArg,
                 "strength");
    EXPECT_ERROR(p.set("strength", "half"), ErrorCode::InvalidArg, "half");
    EXPECT_ERROR(p.plan("{\"stages\": [{\"width\": 64,"), ErrorCode::InvalidArg, nullptr);
    EXPECT_ERROR(p.plan("not json"), ErrorCode::InvalidArg, nullptr);
    EXPECT_ERROR(p.plan("{\"stages\": []}"), ErrorCode::InvalidArg, "between 1 and");
    EXPECT_ERROR(p.plan("{\"stages\": [{\"width\": 64, \"height\": 64, \"x\": 1}]}"),
                 ErrorCode::InvalidArg, "unknown field");
    EXPECT_ERROR(p.plan(std::string("{}\0{}", 5)), ErrorCode::InvalidArg, "NUL");
    EXPECT_ERROR(p.init_image(rgb, kSize, kSize, 2, row), ErrorCode::InvalidArg,
                 "channels must be 1, 3 or 4");
    EXPECT_ERROR(p.init_image(rgb, kSize, kSize, 3, row - 1), ErrorCode::InvalidArg, "stride");
    EXPECT_ERROR(p.init_image(rgb, 0, kSize, 3, row), ErrorCode::InvalidArg,
                 "image width 0 is outside 1..=16384");
    EXPECT_ERROR(p.init_image(rgb, kSize, 100000, 3, row), ErrorCode::InvalidArg,
                 "image height 100000 is outside 1..=16384");
    EXPECT_ERROR(p.mask(rgb, kSize, kSize, 5, row), ErrorCode::InvalidArg, "channels");
    // A vector too short for its layout is refused before the C call could read past it.
    EXPECT_ERROR(p.init_image(init.rgb, kSize, kSize + 1, 3), ErrorCode::InvalidArg, "too few");
    EXPECT_ERROR(p.mask(std::vector<std::uint8_t>(10), kSize, kSize, 1), ErrorCode::InvalidArg,
                 "too few");
    EXPECT_ERROR(p.init_image(std::vector<std::uint8_t>(), 0, 0, 0), ErrorCode::InvalidArg,
                 "empty pixel vector");
    EXPECT_ERROR(p.init_image(dg::Image()), ErrorCode::InvalidArg, "empty dg::Image");
    EXPECT_ERROR(p.mask(dg::Image()), ErrorCode::InvalidArg, "empty dg::Image");

    // Checked at generate time: the mask's size, the init image's size, a mask alone.
    std::vector<std::uint8_t> small(32 * 32, 255);
    dg::Params mismatch = edit_params(init);
    mismatch.mask(small, 32, 32, 1);
    EXPECT_ERROR(pipeline.generate(mismatch), ErrorCode::InvalidArg,
                 "mask is 32x32 but the request is 64x64");
    dg::Params sized = edit_params(init);
    sized.size(128, 64);
    EXPECT_ERROR(pipeline.generate(sized), ErrorCode::InvalidArg,
                 "init image is 64x64 but the request is 128x64");
    dg::Params mask_only;
    mask_only.prompt("a red fox").steps(2).mask(rgb, kSize, kSize, 3, row);
    EXPECT_ERROR(pipeline.generate(mask_only), ErrorCode::InvalidArg, "a mask needs the image");

    // Moved-from params throw NullArg instead of passing NULL to C.
    dg::Params moved = std::move(p);
    EXPECT_ERROR(p.strength(0.5), ErrorCode::NullArg, "moved-from dg::Params");
    EXPECT_ERROR(p.image_guidance_scale(1.5f), ErrorCode::NullArg, "moved-from dg::Params");
    EXPECT_ERROR(p.plan(kPlan), ErrorCode::NullArg, "moved-from dg::Params");
    EXPECT_ERROR(p.init_image(rgb, kSize, kSize, 3, row), ErrorCode::NullArg, "moved-from");
    EXPECT_ERROR(p.clear_mask(), ErrorCode::NullArg, "moved-from");
}

int main(int argc, char **argv) {
    return test::run("edit_test", argc, argv, [](const std::string &model, const std::string &) {
        const Init init = load_init();
        dg::Runtime runtime(test::options());
        dg::Pipeline pipeline = runtime.load(model);
        std::vector<std::uint8_t> img2img = test_img2img(pipeline, init);
        test_inpaint(pipeline, init, img2img);
        test_plan(pipeline);
        test_runtime_options(model, pipeline);
        test_errors(pipeline, init);
        test_inpaint_package(runtime, model, init, img2img);
    });
}
