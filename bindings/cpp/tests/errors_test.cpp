// Errors through the C++ binding: every failure is a dg::Error (a std::runtime_error) whose
// code() mirrors DG_ERROR_* and whose what() is the library's message.
#include "check.hpp"

#include <stdexcept>
#include <string>
#include <type_traits>

static_assert(std::is_base_of<std::runtime_error, dg::Error>::value, "dg::Error is a runtime_error");
static_assert(static_cast<int>(dg::ErrorCode::Ok) == DG_ERROR_OK, "code");
static_assert(static_cast<int>(dg::ErrorCode::NullArg) == DG_ERROR_NULL_ARG, "code");
static_assert(static_cast<int>(dg::ErrorCode::InvalidArg) == DG_ERROR_INVALID_ARG, "code");
static_assert(static_cast<int>(dg::ErrorCode::Io) == DG_ERROR_IO, "code");
static_assert(static_cast<int>(dg::ErrorCode::Model) == DG_ERROR_MODEL, "code");
static_assert(static_cast<int>(dg::ErrorCode::Unsupported) == DG_ERROR_UNSUPPORTED, "code");
static_assert(static_cast<int>(dg::ErrorCode::EpUnavailable) == DG_ERROR_EP_UNAVAILABLE, "code");
static_assert(static_cast<int>(dg::ErrorCode::Cancelled) == DG_ERROR_CANCELLED, "code");
static_assert(static_cast<int>(dg::ErrorCode::Backend) == DG_ERROR_BACKEND, "code");
static_assert(static_cast<int>(dg::ErrorCode::Panic) == DG_ERROR_PANIC, "code");
// RAII handles are move-only.
static_assert(!std::is_copy_constructible<dg::Runtime>::value, "move-only");
static_assert(!std::is_copy_constructible<dg::Pipeline>::value, "move-only");
static_assert(!std::is_copy_constructible<dg::Params>::value, "move-only");
static_assert(!std::is_copy_constructible<dg::RuntimeOptions>::value, "move-only");
static_assert(!std::is_copy_constructible<dg::CancelToken>::value, "move-only");
static_assert(std::is_nothrow_move_constructible<dg::Pipeline>::value, "nothrow move");
static_assert(std::is_nothrow_move_assignable<dg::Params>::value, "nothrow move");

using dg::ErrorCode;

static void test_runtime_errors() {
    // cuda on the CPU-only ONNX Runtime of the tests.
    EXPECT_ERROR(dg::Runtime(dg::RuntimeOptions().execution_provider("cuda")),
                 ErrorCode::EpUnavailable, "cuda");
    EXPECT_ERROR(dg::Runtime(dg::RuntimeOptions().execution_provider("cuda:1")),
                 ErrorCode::EpUnavailable, "cuda");
    // An unknown provider is rejected by the setter already.
    EXPECT_ERROR(dg::RuntimeOptions().execution_provider("warp-drive"), ErrorCode::InvalidArg,
                 "warp-drive");
    // With CPU fallback, cuda works (on the CPU).
    dg::Runtime fallback(dg::RuntimeOptions().execution_provider("cuda").allow_cpu_fallback());
    CHECK(static_cast<bool>(fallback), "fallback runtime");
    // Naming a different ONNX Runtime file after the first was loaded is Backend.
    EXPECT_ERROR(dg::Runtime(dg::RuntimeOptions().ort_library("/nonexistent/libonnxruntime.so")),
                 ErrorCode::Backend, nullptr);
}

static void test_model_errors(const dg::Runtime &rt, const std::string &scratch) {
    EXPECT_ERROR(rt.load("models/no-such-model"), ErrorCode::Model, "no-such-model");
    EXPECT_ERROR(dg::Pipeline(rt, scratch), ErrorCode::Model, "model_index.json");
    EXPECT_ERROR(rt.load(std::string("models/tiny-sd\0x", 16)), ErrorCode::InvalidArg, "NUL");
    // Caught polymorphically as std::runtime_error / std::exception, with the message.
    try {
        rt.load("models/no-such-model");
        CHECK(false, "no exception");
    } catch (const std::runtime_error &e) {
        CHECK(std::string(e.what()).find("no-such-model") != std::string::npos, e.what());
        const auto *dg_error = dynamic_cast<const dg::Error *>(&e);
        CHECK(dg_error != nullptr && dg_error->raw_code() == DG_ERROR_MODEL, "raw_code");
        CHECK(std::string(dg::to_string(dg_error->code())) == "DG_ERROR_MODEL", "to_string");
    }
}

static void test_params_errors() {
    dg::Params p;
    EXPECT_ERROR(p.set("no_such_key", "1"), ErrorCode::InvalidArg, "no_such_key");
    EXPECT_ERROR(p.set("steps", "many"), ErrorCode::InvalidArg, "many");
    EXPECT_ERROR(p.set("rng", "dice"), ErrorCode::InvalidArg, "dice");
    EXPECT_ERROR(p.prompt(std::string("a\0b", 3)), ErrorCode::InvalidArg, "prompt");
    EXPECT_ERROR(p.prompt("\xff\xfe"), ErrorCode::InvalidArg, nullptr);
    // A failed setter leaves the builder usable.
    p.set("steps", "2").set("scheduler.timestep_spacing", "trailing").prompt("ok");
}

static void test_generate_errors(const dg::Pipeline &pipe) {
    dg::Params p = test::fox_params();
    p.steps(0);
    EXPECT_ERROR(pipe.generate(p), ErrorCode::InvalidArg, nullptr);
    p.steps(1).size(63, 64);
    EXPECT_ERROR(pipe.generate(p), ErrorCode::InvalidArg, nullptr);
    p.size(64, 64).scheduler("no-such-scheduler");
    EXPECT_ERROR(pipe.generate(p), ErrorCode::InvalidArg, "no-such-scheduler");
    p.scheduler("euler").num_images(65);
    EXPECT_ERROR(pipe.generate(p), ErrorCode::InvalidArg, nullptr);
    p.num_images(1);
    dg::Images images = pipe.generate(p);
    EXPECT_ERROR(images[0].encode_jpeg(0), ErrorCode::InvalidArg, nullptr);
    EXPECT_ERROR(images[0].write_jpeg("never.jpg", 101), ErrorCode::InvalidArg, nullptr);
}

int main(int argc, char **argv) {
    return test::run("errors_test", argc, argv, [](const std::string &model, const std::string &scratch) {
        test_runtime_errors();
        dg::Runtime rt(test::options());
        test_model_errors(rt, scratch);
        test_params_errors();
        dg::Pipeline pipe(rt, model);
        test_generate_errors(pipe);
    });
}
