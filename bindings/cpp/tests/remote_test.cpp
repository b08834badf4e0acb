// Remote pipelines through the C++ binding, against a scripted OpenAI-compatible server run by
// this test on a thread (127.0.0.1, port chosen by the system). The server's image is a PNG the
// local digits pipeline drew (Image::encode_png), so the remote image must have exactly its
// pixels. Checks: Pipeline::remote + RemoteOptions, kind(), the request the server got (method,
// path, bearer key, JSON body with prompt and model), the image, metadata() (model, revised
// prompt, ignored fields under best_effort()), Progress stage/stages, Unsupported naming
// negative_prompt, a 429 retried into a success, Remote / RateLimited / Refused / Timeout with
// max_retries(0), a gemini pipeline's kind, InvalidArg for an unknown backend or option, and no
// API key in any what().
#include "check.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

namespace {

const char *const kKey = "sk-test-cpp-0123456789abcdef";
const char *const kModel = "dg-test-image-model";
const char *const kPrompt = "a red fox in the snow";
const char *const kRevised = "A red fox standing in fresh snow, revised by the server";

std::string base64(const std::vector<std::uint8_t> &in) {
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    for (std::size_t i = 0; i < in.size(); i += 3) {
        std::uint32_t v = std::uint32_t{in[i]} << 16;
        if (i + 1 < in.size()) v |= std::uint32_t{in[i + 1]} << 8;
        if (i + 2 < in.size()) v |= in[i + 2];
        out += alphabet[(v >> 18) & 63];
        out += alphabet[(v >> 12) & 63];
        out += i + 1 < in.size() ? alphabet[(v >> 6) & 63] : '=';
        out += i + 2 < in.size() ? alphabet[v & 63] : '=';
    }
    return out;
}

// One request as the server saw it.
struct Seen {
    std::string method, path, auth, content_type, body;
};

enum class Reply { Image, Error500, RateLimit429, SlowImage, Moderation400 };

class FakeOpenAI {
public:
    explicit FakeOpenAI(std::string png_b64) : png_b64_(std::move(png_b64)) {
        fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(0x7f000001u);  // 127.0.0.1
        socklen_t len = sizeof addr;
        if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr *>(&addr), sizeof addr) != 0 ||
            ::listen(fd_, 16) != 0 ||
            ::getsockname(fd_, reinterpret_cast<sockaddr *>(&addr), &len) != 0)
            throw std::runtime_error("cannot listen on 127.0.0.1");
        port_ = ntohs(addr.sin_port);
        thread_ = std::thread([this] { loop(); });
    }
    ~FakeOpenAI() {
        stop_ = true;
        thread_.join();
        ::close(fd_);
    }
    FakeOpenAI(const FakeOpenAI &) = delete;
    FakeOpenAI &operator=(const FakeOpenAI &) = delete;

    std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/v1"; }

    // The replies to the next requests (the last repeats); forgets what was seen.
    void serve(std::vector<Reply> script) {
        std::lock_guard<std::mutex> lock(mu_);
        script_ = std::move(script);
        seen_.clear();
    }
    std::vector<Seen> seen() const {
        std::lock_guard<std::mutex> lock(mu_);
        return seen_;
    }

private:
    void loop() {
        while (!stop_) {
            pollfd pfd{fd_, POLLIN, 0};
            if (::poll(&pfd, 1, 50) <= 0) continue;
            const int conn = ::accept(fd_, nullptr, nullptr);
            if (conn < 0) continue;
            handle(conn);
            ::close(conn);
        }
    }

    static std::string header(const std::string &head, const std::string &name) {
        std::size_t pos = 0;
        while ((pos = head.find("\r\n", pos)) != std::string::npos) {
            pos += 2;
            const std::size_t colon = head.find(':', pos), end = head.find("\r\n", pos);
            if (colon == std::string::npos || colon > end) continue;
            std::string key = head.substr(pos, colon - pos);
            for (char &c : key) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
            if (key != name) continue;
            std::size_t v = colon + 1;
            while (v < end && (head[v] == ' ' || head[v] == '\t')) ++v;
            return head.substr(v, end - v);
        }
        return "";
    }

    static void send_all(int fd, const std::string &data) {
        std::size_t sent = 0;
        while (sent < data.size()) {
            const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
            if (n <= 0) return;  // the client gave up (a timeout)
            sent += static_cast<std::size_t>(n);
        }
    }

    static void respond(int fd, int status, const std::string &extra, const std::string &body) {
        send_all(fd, "HTTP/1.1 " + std::to_string(status) + " X\r\ncontent-type: application/json\r\n" +
                         "content-length: " + std::to_string(body.size()) + "\r\n" + extra +
                         "connection: close\r\n\r\n" + body);
    }

    void handle(int fd) {
        std::string data;
        char buf[65536];
        std::size_t head_end = std::string::npos;
        while (head_end == std::string::npos) {
            const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
            if (n <= 0) return;
            data.append(buf, static_cast<std::size_t>(n));
            head_end = data.find("\r\n\r\n");
        }
        const std::string head = data.substr(0, head_end + 2);
        const std::size_t length = std::stoul("0" + header(head, "content-length"));
        while (data.size() < head_end + 4 + length) {
            const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
            if (n <= 0) break;
            data.append(buf, static_cast<std::size_t>(n));
        }
        Seen s;
        const std::size_t sp1 = head.find(' '), sp2 = head.find(' ', sp1 + 1);
        s.method = head.substr(0, sp1);
        s.path = head.substr(sp1 + 1, sp2 - sp1 - 1);
        s.auth = header(head, "authorization");
        s.content_type = header(head, "content-type");
        s.body = data.substr(head_end + 4);
        Reply reply;
        {
            std::lock_guard<std::mutex> lock(mu_);
            reply = seen_.size() < script_.size() ? script_[seen_.size()] : script_.back();
            seen_.push_back(s);
        }
        switch (reply) {
        case Reply::SlowImage:
            std::this_thread::sleep_for(std::chrono::milliseconds(1500));
            [[fallthrough]];
        case Reply::Image:
            respond(fd, 200, "",
                    std::string("{\"created\": 1, \"data\": [{\"b64_json\": \"") + png_b64_ +
                        "\", \"revised_prompt\": \"" + kRevised + "\"}]}");
            break;
        case Reply::Error500:
            respond(fd, 500, "",
                    "{\"error\": {\"message\": \"the image server exploded\", \"type\": \"server_error\"}}");
            break;
        case Reply::Moderation400:  // OpenAI's safety system
            respond(fd, 400, "",
                    "{\"error\": {\"message\": \"Your request was rejected by the safety system.\", "
                    "\"type\": \"image_generation_user_error\", \"code\": \"moderation_blocked\"}}");
            break;
        case Reply::RateLimit429:
            respond(fd, 429, "retry-after-ms: 20\r\n",
                    "{\"error\": {\"message\": \"Rate limit reached\", \"type\": \"requests\", "
                    "\"code\": \"rate_limit_exceeded\"}}");
            break;
        }
    }

    int fd_ = -1;
    int port_ = 0;
    std::atomic<bool> stop_{false};
    std::string png_b64_;
    mutable std::mutex mu_;
    std::vector<Reply> script_{Reply::Image};
    std::vector<Seen> seen_;
    std::thread thread_;
};

bool contains(const std::string &haystack, const std::string &needle) {
    return haystack.find(needle) != std::string::npos;
}

// EXPECT_ERROR (one call of `body`), and what() never shows the API key.
template <class F>
void expect_remote_error(F &&body, dg::ErrorCode code, const char *needle, const char *file,
                         int line) {
    try {
        body();
        test::fail(file, line, std::string("no error, expected ") + dg::to_string(code));
    } catch (const dg::Error &e) {
        if (contains(e.what(), kKey))
            test::fail(file, line, std::string("the API key is in: ") + e.what());
        if (e.code() != code)
            test::fail(file, line, std::string("got ") + dg::to_string(e.code()) + " (" + e.what() +
                                       "), expected " + dg::to_string(code));
        else if (needle != nullptr && !contains(e.what(), needle))
            test::fail(file, line, std::string("message \"") + e.what() + "\" lacks \"" + needle + "\"");
    }
}
#define EXPECT_REMOTE_ERROR(stmt, code, needle) \
    expect_remote_error([&] { stmt; }, (code), (needle), __FILE__, __LINE__)

dg::RemoteOptions options(const FakeOpenAI &server, std::uint32_t retries) {
    dg::RemoteOptions o;
    o.base_url(server.url()).api_key(kKey).model(kModel).max_retries(retries).timeout(
        std::chrono::seconds(30));
    return o;
}

}  // namespace

static_assert(static_cast<int>(dg::ErrorCode::Remote) == DG_ERROR_REMOTE, "code");
static_assert(static_cast<int>(dg::ErrorCode::RateLimited) == DG_ERROR_RATE_LIMITED, "code");
static_assert(static_cast<int>(dg::ErrorCode::Timeout) == DG_ERROR_TIMEOUT, "code");
static_assert(static_cast<int>(dg::ErrorCode::Refused) == DG_ERROR_REFUSED, "code");
static_assert(!std::is_copy_constructible<dg::RemoteOptions>::value, "move-only");

using dg::ErrorCode;

int main(int argc, char **argv) {
    return test::run("remote_test", argc, argv, [](const std::string &model, const std::string &) {
        // The image to serve: one the local digits pipeline draws.
        dg::Runtime rt(test::options());
        dg::Pipeline local = rt.load(model);
        CHECK(local.kind() == "local", local.kind());
        dg::Params lp;
        lp.prompt("a handwritten digit 3").seed(3).steps(2);
        dg::Images drawn = local.generate(lp);
        CHECK(drawn.metadata() == "{}", drawn.metadata());
        const dg::Image &served = drawn[0];
        FakeOpenAI server(base64(served.encode_png()));

        // Success: the request, the image, the metadata, the progress reports.
        dg::Pipeline p = dg::Pipeline::remote("openai", options(server, 1));
        CHECK(p.kind() == "openai", p.kind());
        dg::Params params;
        params.prompt(kPrompt);
        std::vector<dg::Progress> reports;
        dg::Images images = p.generate(params, [&](const dg::Progress &pr) {
            reports.push_back(pr);
            return true;
        });
        std::vector<Seen> seen = server.seen();
        CHECK(seen.size() == 1, std::to_string(seen.size()) + " requests");
        if (!seen.empty()) {
            const Seen &s = seen[0];
            CHECK(s.method == "POST" && s.path == "/v1/images/generations", s.method + " " + s.path);
            CHECK(s.auth == std::string("Bearer ") + kKey, s.auth);
            CHECK(contains(s.content_type, "application/json"), s.content_type);
            CHECK(!s.body.empty() && s.body.front() == '{' && s.body.back() == '}', s.body);
            CHECK(contains(s.body, std::string("\"prompt\":\"") + kPrompt + "\""), s.body);
            CHECK(contains(s.body, std::string("\"model\":\"") + kModel + "\""), s.body);
        }
        CHECK(images.size() == 1, std::to_string(images.size()) + " images");
        if (images.size() == 1) {
            CHECK(images[0].width() == served.width() && images[0].height() == served.height(),
                  "size differs from the served image");
            CHECK(images[0].to_vector() == served.to_vector(), "pixels differ from the served PNG");
        }
        const std::string meta = images.metadata();
        CHECK(contains(meta, "\"revised_prompts\"") && contains(meta, kRevised), meta);
        CHECK(contains(meta, std::string("\"model\":\"") + kModel + "\""), meta);
        CHECK(!contains(meta, kKey), meta);
        CHECK(!reports.empty(), "no progress report");
        if (!reports.empty()) {
            const dg::Progress &last = reports.back();
            CHECK(last.stage == 1 && last.stages == 1,
                  "stage " + std::to_string(last.stage) + "/" + std::to_string(last.stages));
            CHECK(last.step >= 1 && last.step <= last.total, "step " + std::to_string(last.step));
        }

        // A negative prompt: Unsupported naming it, nothing sent; best_effort lists it.
        server.serve({Reply::Image});
        params.negative_prompt("blurry, watermark");
        EXPECT_REMOTE_ERROR(p.generate(params), ErrorCode::Unsupported, "negative_prompt");
        CHECK(server.seen().empty(), "an unsupported request was sent");
        params.best_effort();
        dg::Images lenient = p.generate(params);
        const std::string lmeta = lenient.metadata();
        const std::size_t ignored = lmeta.find("\"ignored\"");
        CHECK(ignored != std::string::npos && lmeta.find("negative_prompt", ignored) != std::string::npos,
              lmeta);
        seen = server.seen();
        CHECK(seen.size() == 1 && !contains(seen[0].body, "blurry"),
              "best effort should send one request without the negative prompt");
        params.best_effort(false).clear_negative_prompt();

        // max_retries 1: a 429 then a success; two 429s are RateLimited.
        server.serve({Reply::RateLimit429, Reply::Image});
        CHECK(p.generate(params).size() == 1, "429 then 200");
        CHECK(server.seen().size() == 2, std::to_string(server.seen().size()) + " requests");
        server.serve({Reply::RateLimit429});
        EXPECT_REMOTE_ERROR(p.generate(params), ErrorCode::RateLimited, "429");

        // max_retries 0: a 500 is Remote after one request; a slow answer is Timeout.
        dg::Pipeline once = dg::Pipeline::remote("openai", options(server, 0));
        server.serve({Reply::Error500});
        EXPECT_REMOTE_ERROR(once.generate(params), ErrorCode::Remote, "the image server exploded");
        CHECK(server.seen().size() == 1, std::to_string(server.seen().size()) + " requests");
        try {
            once.generate(params);
            CHECK(false, "a 500 did not throw");
        } catch (const dg::Error &e) {
            CHECK(e.remote() && !e.cancelled() && std::string(dg::to_string(e.code())) == "DG_ERROR_REMOTE",
                  e.what());
        }
        server.serve({Reply::Moderation400});
        EXPECT_REMOTE_ERROR(once.generate(params), ErrorCode::Refused, "safety system");
        dg::Pipeline hasty = dg::Pipeline::remote(
            "openai", options(server, 0).timeout(std::chrono::milliseconds(300)));
        server.serve({Reply::SlowImage});
        EXPECT_REMOTE_ERROR(hasty.generate(params), ErrorCode::Timeout, nullptr);

        // A gemini pipeline is made without sending anything.
        server.serve({Reply::Image});
        dg::Pipeline gemini =
            dg::Pipeline::remote("gemini", dg::RemoteOptions().base_url(server.url()).api_key(kKey));
        CHECK(gemini.kind() == "gemini", gemini.kind());
        CHECK(server.seen().empty(), "making a pipeline sent a request");

        // Bad backends and options.
        EXPECT_REMOTE_ERROR(dg::Pipeline::remote("dall-e-over-carrier-pigeon", options(server, 0)),
                            ErrorCode::InvalidArg, "dall-e-over-carrier-pigeon");
        EXPECT_REMOTE_ERROR(dg::Pipeline::remote("openai", options(server, 0).set("no_such_option", "1")),
                            ErrorCode::InvalidArg, "no_such_option");
        EXPECT_REMOTE_ERROR(dg::Pipeline::remote("openai", options(server, 0).set("timeout_s", "soon")),
                            ErrorCode::InvalidArg, "timeout_s");
        EXPECT_REMOTE_ERROR(options(server, 0).timeout(std::chrono::seconds(0)), ErrorCode::InvalidArg,
                            "timeout");
        EXPECT_REMOTE_ERROR(options(server, 0).api_key(std::string(kKey) + std::string(1, '\0')),
                            ErrorCode::InvalidArg, "NUL");
        // An empty value removes a key again.
        dg::Pipeline::remote("openai", options(server, 0).set("no_such_option", "1").set("no_such_option", ""));
    });
}
