// LoRA adapters through the C++ binding, as tests/c/lora.c: the fox request with models/lora/
// sd_a.safetensors at 0.8 (its raw RGB goes to DG_LORA_RGB, which test.sh compares with the C
// test's), the default stack, clear_loras, unloading back to the base pixels, and the errors.
#include "check.hpp"

#include <cmath>
#include <limits>
#include <string>
#include <vector>

using dg::ErrorCode;

static std::vector<std::uint8_t> pixels(const dg::Pipeline &pipe, const dg::Params &params) {
    return pipe.generate(params).at(0).to_vector();
}

static bool contains(const std::string &text, const std::string &needle) {
    return text.find(needle) != std::string::npos;
}

int main(int argc, char **argv) {
    return test::run("lora_test", argc, argv, [](const std::string &model, const std::string &) {
        const std::string lora_dir = model + "/../lora/";
        dg::Runtime rt(test::options());
        dg::Pipeline pipe = rt.load(model);
        const auto base = pixels(pipe, test::fox_params());
        CHECK(pipe.loras_json() == R"({"adapters":[],"default_stack":[]})", pipe.loras_json());

        pipe.load_lora("a", lora_dir + "sd_a.safetensors");
        pipe.load_lora("te", lora_dir + "sd_te.safetensors", /*allow_partial=*/true);
        const std::string listed = pipe.loras_json();
        for (const char *needle : {R"("name":"a")", R"("format":"diffusers")", R"("unet":40)",
                                   R"("text_encoder":20)", R"("default_strength":null)"})
            CHECK(contains(listed, needle), listed + " lacks " + needle);
        CHECK(pixels(pipe, test::fox_params()) == base, "unused adapters changed the pixels");

        dg::Params with = test::fox_params();
        with.lora("a", 0.8f);
        const auto lora = pixels(pipe, with);
        CHECK(lora != base, "the stack a:0.8 changed nothing");
        if (const char *out = std::getenv("DG_LORA_RGB")) {
            std::ofstream f(out, std::ios::binary);
            f.write(reinterpret_cast<const char *>(lora.data()),
                    static_cast<std::streamsize>(lora.size()));
            CHECK(f.good(), std::string("cannot write ") + out);
        }
        dg::Params keyed = test::fox_params();
        keyed.set("loras", "a:0.8");
        CHECK(pixels(pipe, keyed) == lora, "set(\"loras\") differs from lora()");

        // The default stack, and clear_loras overriding it.
        pipe.set_default_loras({{"a", 0.8f}});
        CHECK(contains(pipe.loras_json(), R"("default_stack":[{"name":"a","strength":0.8}])"),
              pipe.loras_json());
        CHECK(pixels(pipe, test::fox_params()) == lora, "the default stack differs from lora()");
        dg::Params none = test::fox_params();
        none.clear_loras();
        CHECK(pixels(pipe, none) == base, "clear_loras did not override the default stack");
        pipe.clear_default_loras();
        CHECK(pixels(pipe, test::fox_params()) == base, "clear_default_loras left a stack");

        // Errors.
        EXPECT_ERROR(pipe.load_lora("x", lora_dir + "no-such.safetensors"), ErrorCode::Io,
                     "no-such.safetensors");
        EXPECT_ERROR(pipe.load_lora("x", model + "/model_index.json"), ErrorCode::InvalidArg,
                     "model_index.json");
        EXPECT_ERROR(pipe.load_lora("bad name", lora_dir + "sd_a.safetensors"),
                     ErrorCode::InvalidArg, "bad name");
        EXPECT_ERROR(pipe.load_lora(std::string("a\0b", 3), lora_dir + "sd_a.safetensors"),
                     ErrorCode::InvalidArg, "NUL");
        EXPECT_ERROR(test::fox_params().lora("a", std::numeric_limits<float>::quiet_NaN()),
                     ErrorCode::InvalidArg, "finite");
        EXPECT_ERROR(test::fox_params().lora("a").lora("a", 0.5f), ErrorCode::InvalidArg, "twice");
        EXPECT_ERROR(pipe.set_default_loras({{"a", std::numeric_limits<float>::infinity()}}),
                     ErrorCode::InvalidArg, "finite");
        EXPECT_ERROR(pipe.set_default_loras({{"ghost", 1.0f}}), ErrorCode::InvalidArg, "ghost");
        EXPECT_ERROR(pipe.set_default_loras({{"a;b", 1.0f}}), ErrorCode::InvalidArg, "a;b");
        dg::Params ghost = test::fox_params();
        ghost.lora("ghost");
        EXPECT_ERROR(pipe.generate(ghost), ErrorCode::InvalidArg, "loaded: a, te");

        // Unloading: the base pixels again.
        pipe.unload_lora("a");
        pipe.unload_lora("te");
        CHECK(pipe.loras_json() == R"({"adapters":[],"default_stack":[]})", pipe.loras_json());
        CHECK(pixels(pipe, test::fox_params()) == base, "after unloading, not the base pixels");
        EXPECT_ERROR(pipe.unload_lora("a"), ErrorCode::InvalidArg, "loaded: none");
        EXPECT_ERROR(pipe.generate(with), ErrorCode::InvalidArg, "`a`");

        // A remote pipeline has no adapters (nothing is sent).
        dg::Pipeline remote = dg::Pipeline::remote(
            "openai", dg::RemoteOptions().set("base_url", "http://127.0.0.1:9/v1").set("api_key", "sk-test"));
        EXPECT_ERROR(remote.load_lora("a", lora_dir + "sd_a.safetensors"), ErrorCode::Unsupported,
                     "openai");
        EXPECT_ERROR(remote.unload_lora("a"), ErrorCode::Unsupported, "openai");
        EXPECT_ERROR(remote.loras_json(), ErrorCode::Unsupported, "openai");
        EXPECT_ERROR(remote.set_default_loras({}), ErrorCode::Unsupported, "openai");
        EXPECT_ERROR(remote.clear_default_loras(), ErrorCode::Unsupported, "openai");

        // A moved-from pipeline.
        dg::Pipeline moved = std::move(pipe);
        EXPECT_ERROR(pipe.load_lora("a", lora_dir + "sd_a.safetensors"), ErrorCode::NullArg,
                     "moved-from");
    });
}
