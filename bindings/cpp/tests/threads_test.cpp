// Eight std::threads generate on one dg::Pipeline at once (seeds 0..7); each image must equal a
// sequential run with the same seed, byte for byte.
#include "check.hpp"

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <exception>
#include <string>
#include <thread>
#include <vector>

constexpr int kThreads = 8;

static dg::Params request(std::uint64_t seed) {
    dg::Params p;
    p.prompt("a red fox").seed(seed).steps(3).scheduler("euler");
    return p;
}

int main(int argc, char **argv) {
    return test::run("threads_test", argc, argv, [](const std::string &model, const std::string &) {
        const dg::Runtime rt(test::options());
        const dg::Pipeline pipe(rt, model);

        std::vector<std::vector<std::uint8_t>> sequential(kThreads);
        for (int i = 0; i < kThreads; ++i)
            sequential[static_cast<std::size_t>(i)] =
                pipe.generate(request(static_cast<std::uint64_t>(i)))[0].to_vector();

        // Every request waits in its step-1 callback until all eight are there, so all eight
        // are provably in flight on the pipeline at once (a timeout turns a serialising pipeline
        // into a failure instead of a hang).
        std::vector<std::vector<std::uint8_t>> parallel(kThreads);
        std::vector<std::exception_ptr> errors(kThreads);
        std::mutex m;
        std::condition_variable cv;
        int arrived = 0;
        std::vector<std::thread> threads;
        for (int i = 0; i < kThreads; ++i) {
            threads.emplace_back([&, i] {
                const auto slot = static_cast<std::size_t>(i);
                try {
                    dg::Params p = request(static_cast<std::uint64_t>(i));  // one per thread
                    dg::Images images = pipe.generate(p, [&](const dg::Progress &pr) {
                        if (pr.step != 1) return true;
                        std::unique_lock<std::mutex> lock(m);
                        ++arrived;
                        cv.notify_all();
                        if (!cv.wait_for(lock, std::chrono::seconds(60),
                                         [&] { return arrived == kThreads; }))
                            throw std::runtime_error("only " + std::to_string(arrived) +
                                                     " requests in flight at once");
                        return true;
                    });
                    CHECK(images.seed() == static_cast<std::uint64_t>(i), "seed");
                    parallel[slot] = images[0].to_vector();
                } catch (...) {
                    errors[slot] = std::current_exception();
                }
            });
        }
        for (std::thread &t : threads) t.join();

        for (std::size_t i = 0; i < kThreads; ++i) {
            if (errors[i]) {
                try {
                    std::rethrow_exception(errors[i]);
                } catch (const std::exception &e) {
                    CHECK(false, "thread " + std::to_string(i) + ": " + e.what());
                }
                continue;
            }
            CHECK(parallel[i].size() == 64 * 64 * 3, "thread " + std::to_string(i) + " size");
            CHECK(parallel[i] == sequential[i], "seed " + std::to_string(i) + " differs from sequential");
        }
        CHECK(sequential[0] != sequential[1], "seeds 0 and 1 gave the same image");
    });
}
