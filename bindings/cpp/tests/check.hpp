// Shared helpers of the C++ binding's tests: a failed CHECK prints file:line and the test goes
// on, so one run shows every broken case; main() returns non-zero if any failed.
#ifndef DG_CPP_TEST_CHECK_HPP
#define DG_CPP_TEST_CHECK_HPP

#include <diffgentor.hpp>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace test {

inline std::atomic<int> &failures() {  // CHECK may run on several threads
    static std::atomic<int> n{0};
    return n;
}

inline void fail(const char *file, int line, const std::string &what) {
    std::fprintf(stderr, "%s:%d: FAIL: %s\n", file, line, what.c_str());
    ++failures();
}

#define CHECK(cond, msg)                                                                  \
    do {                                                                                  \
        if (!(cond)) ::test::fail(__FILE__, __LINE__, std::string(#cond ": ") + (msg));   \
    } while (0)

// `body` must throw dg::Error with `code` whose what() contains `needle` (if not null).
template <class F>
void expect_error(F &&body, dg::ErrorCode code, const char *needle, const char *file, int line) {
    try {
        body();
        fail(file, line, std::string("no error, expected ") + dg::to_string(code));
    } catch (const dg::Error &e) {
        if (e.code() != code)
            fail(file, line, std::string("got ") + dg::to_string(e.code()) + " (" + e.what() +
                                 "), expected " + dg::to_string(code));
        else if (needle != nullptr && std::string(e.what()).find(needle) == std::string::npos)
            fail(file, line, std::string("message \"") + e.what() + "\" lacks \"" + needle + "\"");
    }
}
#define EXPECT_ERROR(stmt, code, needle) \
    ::test::expect_error([&] { stmt; }, (code), (needle), __FILE__, __LINE__)

// Runtime options for tests: DG_TEST_INTRA_THREADS (if set) caps ONNX Runtime's threads.
inline dg::RuntimeOptions options() {
    dg::RuntimeOptions opts;
    if (const char *t = std::getenv("DG_TEST_INTRA_THREADS"))
        opts.intra_threads(static_cast<std::uint32_t>(std::strtoul(t, nullptr, 10)));
    return opts;
}

// The fox request of bindings.md: tiny-sd, "a red fox", seed 42, 3 steps, euler.
inline dg::Params fox_params() {
    dg::Params p;
    p.prompt("a red fox").seed(42).steps(3).scheduler("euler");
    return p;
}

inline std::vector<std::uint8_t> read_file(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in),
                                     std::istreambuf_iterator<char>());
}

// Runs `body(argc, argv)`, turning an escaped exception into a failure.
template <class F>
int run(const char *name, int argc, char **argv, F &&body) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s MODEL_DIR SCRATCH_DIR\n", name);
        return 2;
    }
    try {
        std::filesystem::create_directories(argv[2]);
        body(std::string(argv[1]), std::string(argv[2]));
    } catch (const std::exception &e) {
        fail(name, 0, std::string("unexpected exception: ") + e.what());
    }
    if (failures() != 0) {
        std::fprintf(stderr, "%s: %d failure(s)\n", name, failures().load());
        return 1;
    }
    std::printf("%s: ok\n", name);
    return 0;
}

}  // namespace test

#endif
