// Cancellation and progress through the C++ binding: the callback returning false, a CancelToken
// raised before the request and from another std::thread (synchronised through the callback, no
// sleeps), and exceptions thrown inside the callback, which must come out of generate unchanged
// once the C call has returned.
#include "check.hpp"

#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using dg::ErrorCode;

static std::string steps_of(const std::vector<std::uint32_t> &steps) {
    std::string s;
    for (std::uint32_t v : steps) s += std::to_string(v) + " ";
    return "steps seen: " + s;
}

static void test_callback_cancels(const dg::Pipeline &pipe) {
    dg::Params p = test::fox_params();
    std::vector<std::uint32_t> steps;
    EXPECT_ERROR(pipe.generate(p,
                               [&](const dg::Progress &pr) {
                                   steps.push_back(pr.step);
                                   return false;
                               }),
                 ErrorCode::Cancelled, nullptr);
    CHECK(steps == std::vector<std::uint32_t>{1}, steps_of(steps));

    // Cancelling at step 2 of 3.
    steps.clear();
    try {
        pipe.generate(p, [&](const dg::Progress &pr) {
            steps.push_back(pr.step);
            return pr.step < 2;
        });
        CHECK(false, "no exception");
    } catch (const dg::Error &e) {
        CHECK(e.cancelled(), e.what());
    }
    CHECK((steps == std::vector<std::uint32_t>{1, 2}), steps_of(steps));
}

static void test_token_before(const dg::Pipeline &pipe) {
    dg::Params p = test::fox_params();
    dg::CancelToken token;
    token.cancel();
    token.cancel();  // idempotent
    int calls = 0;
    EXPECT_ERROR(pipe.generate(p, token,
                               [&](const dg::Progress &) {
                                   ++calls;
                                   return true;
                               }),
                 ErrorCode::Cancelled, nullptr);
    CHECK(calls == 0, "callback ran " + std::to_string(calls) + " times for a cancelled request");
    EXPECT_ERROR(pipe.generate(p, token), ErrorCode::Cancelled, nullptr);  // stays raised
}

// Another thread raises the token while the step-1 callback waits for it: the request must stop
// before step 2. A handshake through the callback makes this deterministic.
static void test_token_from_thread(const dg::Pipeline &pipe) {
    dg::Params p = test::fox_params();
    dg::CancelToken token;
    std::mutex m;
    std::condition_variable cv;
    bool reached = false, raised = false;

    std::thread canceller([&] {
        std::unique_lock<std::mutex> lock(m);
        cv.wait(lock, [&] { return reached; });
        token.cancel();
        raised = true;
        cv.notify_all();
    });

    std::vector<std::uint32_t> steps;
    EXPECT_ERROR(pipe.generate(p, token,
                               [&](const dg::Progress &pr) {
                                   steps.push_back(pr.step);
                                   std::unique_lock<std::mutex> lock(m);
                                   reached = true;
                                   cv.notify_all();
                                   cv.wait(lock, [&] { return raised; });
                                   return true;  // the token, not the callback, cancels
                               }),
                 ErrorCode::Cancelled, nullptr);
    canceller.join();
    CHECK(steps == std::vector<std::uint32_t>{1}, steps_of(steps));

    // An unraised token does nothing.
    dg::CancelToken idle;
    CHECK(pipe.generate(p, idle).size() == 1, "unraised token");
}

struct Boom : std::runtime_error {
    explicit Boom(std::uint32_t s) : std::runtime_error("boom"), step(s) {}
    std::uint32_t step;
};

static void test_callback_throws(const dg::Pipeline &pipe) {
    dg::Params p = test::fox_params();
    std::vector<std::uint32_t> steps;
    bool caught = false;
    try {
        pipe.generate(p, [&](const dg::Progress &pr) -> bool {
            steps.push_back(pr.step);
            if (pr.step == 2) throw Boom(pr.step);
            return true;
        });
    } catch (const Boom &b) {  // the user's exception, not a dg::Error(Cancelled)
        caught = true;
        CHECK(b.step == 2, "step in exception");
    } catch (const dg::Error &e) {
        CHECK(false, std::string("got dg::Error instead of the callback's exception: ") + e.what());
    }
    CHECK(caught, "the callback's exception did not propagate");
    CHECK((steps == std::vector<std::uint32_t>{1, 2}), "callback ran after throwing: " + steps_of(steps));

    // Any type, thrown on the last step, and together with a raised token.
    caught = false;
    dg::CancelToken token;
    try {
        pipe.generate(p, token, [&](const dg::Progress &pr) -> bool {
            if (pr.step == 3) {
                token.cancel();
                throw 42;
            }
            return true;
        });
    } catch (int v) {
        caught = v == 42;
    }
    CHECK(caught, "a non-std exception did not propagate");

    // The pipeline is fine afterwards and reproduces the fox.
    dg::Images a = pipe.generate(p);
    dg::Images b = pipe.generate(p, [](const dg::Progress &) { return true; });
    CHECK(a[0].to_vector() == b[0].to_vector(), "generate after a throwing callback");
}

int main(int argc, char **argv) {
    return test::run("cancel_test", argc, argv, [](const std::string &model, const std::string &) {
        dg::Runtime rt(test::options());
        dg::Pipeline pipe = rt.load(model);
        test_callback_cancels(pipe);
        test_token_before(pipe);
        test_token_from_thread(pipe);
        test_callback_throws(pipe);
    });
}
