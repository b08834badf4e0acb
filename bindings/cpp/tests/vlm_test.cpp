// The VLM part of the C++ binding (dg::Vlm, dg::VlmParams, dg::VlmResult) on the tiny Qwen2.5-VL:
// greedy token ids equal transformers' (models/vlm-goldens.json) for one image and two, the token
// callback sees every token and cancels, bad keys and values throw InvalidArg, prompt enhancement
// runs, and threads share one model.
#include "check.hpp"

#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using dg::ErrorCode;

namespace {

// Just enough JSON for models/vlm-goldens.json (written by json.dump with indent): the value of
// `"key":` after position `from`.
std::size_t after_key(const std::string &json, const std::string &key, std::size_t from) {
    const std::string needle = "\"" + key + "\":";
    const std::size_t at = json.find(needle, from);
    if (at == std::string::npos) throw std::runtime_error("goldens: no " + key);
    return at + needle.size();
}

std::string string_at(const std::string &json, std::size_t pos) {
    const std::size_t open = json.find('"', pos);
    const std::size_t close = json.find('"', open + 1);  // the strings read here have no escapes
    return json.substr(open + 1, close - open - 1);
}

// One golden case: its images (paths under models/), prompt, max_new_tokens and expected ids.
struct Golden {
    std::vector<std::string> images;
    std::string prompt;
    std::uint32_t max_new_tokens = 0;
    std::vector<std::int64_t> expected_ids;
    std::size_t prompt_tokens = 0;
};

Golden golden(const std::string &models, const std::string &name) {
    const std::vector<std::uint8_t> bytes = test::read_file(models + "/vlm-goldens.json");
    const std::string json(bytes.begin(), bytes.end());
    const std::size_t start = json.find("\"name\": \"" + name + "\"");
    if (start == std::string::npos) throw std::runtime_error("goldens: no case " + name);
    Golden g;
    std::size_t pos = json.find('[', after_key(json, "images", start));
    const std::size_t images_end = json.find(']', pos);
    while ((pos = json.find('"', pos + 1)) < images_end) {
        g.images.push_back(models + "/" + string_at(json, pos));
        pos = json.find('"', pos + 1);
    }
    g.prompt = string_at(json, after_key(json, "prompt", start));
    g.max_new_tokens = static_cast<std::uint32_t>(
        std::strtoul(json.c_str() + after_key(json, "max_new_tokens", start), nullptr, 10));
    // input_ids: count the numbers of the list.
    pos = json.find('[', after_key(json, "input_ids", start));
    for (const std::size_t end = json.find(']', pos); pos < end; ++pos)
        if (json[pos] == ',' || json[pos] == '[') {
            if (json.find_first_not_of(" \n", pos + 1) != end) ++g.prompt_tokens;
        }
    pos = json.find('[', after_key(json, "expected_ids", start)) + 1;
    const std::size_t end = json.find(']', pos);
    while (pos < end) {
        char *next = nullptr;
        g.expected_ids.push_back(std::strtoll(json.c_str() + pos, &next, 10));
        pos = json.find(',', static_cast<std::size_t>(next - json.c_str()));
        if (pos == std::string::npos || pos > end) break;
        ++pos;
    }
    return g;
}

std::string ids_of(const std::vector<std::int64_t> &ids) {
    std::string s;
    for (std::int64_t id : ids) s += std::to_string(id) + " ";
    return s;
}

dg::VlmParams params_of(const Golden &g) {
    dg::VlmParams p;
    for (const std::string &image : g.images) p.image_file(image);
    p.text(g.prompt).max_new_tokens(g.max_new_tokens);
    return p;
}

void test_caption(const dg::Vlm &vlm, const std::string &models) {
    const Golden g = golden(models, "image_96x64");
    CHECK(g.expected_ids.size() == 16 && g.prompt_tokens == 58, ids_of(g.expected_ids));
    const std::string info = vlm.info();
    CHECK(info.find("\"layout\":\"onnxruntime-genai\"") != std::string::npos, info);
    CHECK(info.find("\"chat\":true") != std::string::npos, info);

    const dg::VlmResult r = vlm.generate(params_of(g));
    CHECK(r.token_ids() == g.expected_ids,
          "got " + ids_of(r.token_ids()) + "transformers " + ids_of(g.expected_ids));
    CHECK(r.prompt_tokens() == g.prompt_tokens, std::to_string(r.prompt_tokens()));
    CHECK(r.finish_reason() == "length", r.finish_reason());
    CHECK(r.timings().find("\"first_token_s\":") != std::string::npos, r.timings());
    const dg::VlmResult copy = r;  // copies share the result
    CHECK(copy.text() == r.text() && copy.get() == r.get(), "copy");
}

// Two images in one prompt: one from the file, one from its bytes.
void test_two_images(const dg::Vlm &vlm, const std::string &models) {
    const Golden g = golden(models, "two_images");
    dg::VlmParams p;
    p.image_file(g.images.at(0)).image_encoded(test::read_file(g.images.at(1)));
    p.text(g.prompt).set("max_new_tokens", std::to_string(g.max_new_tokens));
    const dg::VlmResult r = vlm.generate(p);
    CHECK(r.token_ids() == g.expected_ids,
          "got " + ids_of(r.token_ids()) + "transformers " + ids_of(g.expected_ids));
}

void test_streaming(const dg::Vlm &vlm, const std::string &models) {
    const Golden g = golden(models, "text_only");
    const dg::VlmParams p = params_of(g);
    std::vector<std::int64_t> ids;
    std::string text;
    const dg::VlmResult r = vlm.generate(p, [&](const dg::VlmToken &t) {
        ids.push_back(t.id);
        text += t.text;
        CHECK(t.index == ids.size(), "index " + std::to_string(t.index));
        return true;
    });
    CHECK(ids == g.expected_ids && r.token_ids() == g.expected_ids, ids_of(ids));
    CHECK(text == r.text(), "streamed text differs from the answer");

    // Returning false at the third token cancels.
    std::size_t calls = 0;
    EXPECT_ERROR(vlm.generate(p, [&](const dg::VlmToken &) { return ++calls < 3; }),
                 ErrorCode::Cancelled, nullptr);
    CHECK(calls == 3, std::to_string(calls) + " calls");

    // A token raised from the callback stops the request before the next token.
    dg::CancelToken token;
    calls = 0;
    EXPECT_ERROR(vlm.generate(p, token,
                              [&](const dg::VlmToken &) {
                                  if (++calls == 2) token.cancel();
                                  return true;
                              }),
                 ErrorCode::Cancelled, nullptr);
    CHECK(calls == 2, std::to_string(calls) + " calls");

    // An exception from the callback comes out of generate unchanged.
    bool caught = false;
    try {
        vlm.generate(p, [](const dg::VlmToken &t) -> bool {
            if (t.index == 2) throw std::out_of_range("boom");
            return true;
        });
    } catch (const std::out_of_range &) {
        caught = true;
    }
    CHECK(caught, "the callback's exception did not propagate");
    CHECK(vlm.generate(p).token_ids() == g.expected_ids, "generate after a throwing callback");
}

void test_errors(const dg::Vlm &vlm, const std::string &models) {
    dg::VlmParams p;
    EXPECT_ERROR(p.set("max_tokens", "8"), ErrorCode::InvalidArg, "max_new_tokens");
    EXPECT_ERROR(p.set("top_p", "1.5"), ErrorCode::InvalidArg, "1.5");
    EXPECT_ERROR(p.temperature(-1.0f), ErrorCode::InvalidArg, "temperature");
    EXPECT_ERROR(p.max_new_tokens(0), ErrorCode::InvalidArg, "max_new_tokens");
    EXPECT_ERROR(p.text("a", std::string("us\0er", 6)), ErrorCode::InvalidArg, "NUL");
    EXPECT_ERROR(p.image_file("/nonexistent/x.png"), ErrorCode::Io, "/nonexistent/x.png");
    EXPECT_ERROR(p.image_encoded(std::vector<std::uint8_t>{1, 2, 3}), ErrorCode::InvalidArg,
                 nullptr);
    EXPECT_ERROR(p.image(std::vector<std::uint8_t>(10), 28, 28, 3), ErrorCode::InvalidArg,
                 "too few");
    EXPECT_ERROR(vlm.generate(p), ErrorCode::InvalidArg, "message");  // nothing was added
    p.image_file(models + "/vlm-images/tiny_10x10.png").text("what is this?");
    EXPECT_ERROR(vlm.generate(p), ErrorCode::InvalidArg, "14");
    EXPECT_ERROR(dg::VlmParams::enhance("sdxl", "x"), ErrorCode::InvalidArg, "qwen_image_edit");
    EXPECT_ERROR(dg::VlmParams::enhance("t2i", "x").text("more"), ErrorCode::InvalidArg, "image");
    dg::VlmParams moved;
    dg::VlmParams target = std::move(moved);
    EXPECT_ERROR(moved.text("x"), ErrorCode::NullArg, "moved-from");
}

void test_enhance(const dg::Vlm &vlm, const std::string &models) {
    const std::string image = models + "/vlm-images/square_80x80.png";
    dg::VlmParams p = dg::VlmParams::enhance("qwen_image_edit", "make the square blue");
    p.image_file(image).max_new_tokens(24).temperature(0.7f).top_k(20).top_p(0.9f).seed(5);
    p.repetition_penalty(1.1f).system("Rewrite the instruction.").stop("\n\n\n");
    const dg::VlmResult a = vlm.generate(p);
    const dg::VlmResult b = vlm.generate(p);
    CHECK(!a.token_ids().empty() && a.token_ids() == b.token_ids(), "seeded sampling repeats");
    CHECK(a.enhanced_prompt() == b.enhanced_prompt(), a.enhanced_prompt());
    // The one-call form is the same request with the defaults.
    const std::string once = vlm.enhance("flux2", "a red fox", image);
    dg::VlmParams same = dg::VlmParams::enhance("flux2", "a red fox");
    CHECK(once == vlm.generate(same.image_file(image)).enhanced_prompt(), once);
}

void test_threads(const dg::Runtime &rt, const std::string &models) {
    // A model of its own on the tfjs layout, shared by threads.
    const dg::Vlm vlm = rt.load_vlm(models + "/tiny-qwen2.5-vl-tfjs");
    CHECK(vlm.info().find("transformers.js") != std::string::npos, vlm.info());
    std::vector<std::thread> threads;
    for (const char *name : {"image_96x64", "image_80x80", "text_only", "two_images"}) {
        const Golden g = golden(models, name);
        threads.emplace_back([&vlm, g, name] {
            try {
                const dg::VlmResult r = vlm.generate(params_of(g));
                CHECK(r.token_ids() == g.expected_ids, std::string(name) + ": " + ids_of(r.token_ids()));
            } catch (const std::exception &e) {
                CHECK(false, std::string(name) + ": " + e.what());
            }
        });
    }
    for (std::thread &t : threads) t.join();
}

}  // namespace

int main(int argc, char **argv) {
    return test::run("vlm_test", argc, argv, [](const std::string &model, const std::string &) {
        const std::string models = model.substr(0, model.find_last_of('/'));
        dg::Runtime rt(test::options());
        const dg::Vlm vlm(rt, model);
        test_caption(vlm, models);
        test_two_images(vlm, models);
        test_streaming(vlm, models);
        test_errors(vlm, models);
        test_enhance(vlm, models);
        test_threads(rt, models);
    });
}
