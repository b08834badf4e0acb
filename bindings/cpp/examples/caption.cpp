// caption: a vision-language model through the C++ binding. It captions images, answers a
// question about them, or rewrites an instruction into a better prompt for an image generator.
//
// usage: caption MODEL_DIR IMAGE [IMAGE...] [--prompt TEXT] [--max-new-tokens N] [--stream]
//        caption MODEL_DIR [IMAGE] --enhance STYLE --instruction TEXT
//   e.g. caption models/tiny-qwen2.5-vl models/vlm-images/shapes_96x64.png --prompt "What is in the picture?"
//        caption models/tiny-qwen2.5-vl photo.png --enhance qwen_image_edit --instruction "make the sky purple"
#include <diffgentor.hpp>

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

int main(int argc, char **argv) {
    if (argc < 2) {
        std::cerr << "usage: caption MODEL_DIR IMAGE... [--prompt TEXT] [--max-new-tokens N] "
                     "[--stream] [--enhance STYLE --instruction TEXT]\n";
        return 2;
    }
    const std::string model_dir = argv[1];
    std::vector<std::string> images;
    // The prompt `dg caption` uses when given none.
    std::string prompt =
        "Describe this image in one detailed paragraph: the subject, the setting, colours, "
        "lighting and style.";
    std::string style, instruction;
    unsigned long max_new_tokens = 32;
    bool stream = false;
    for (int i = 2; i < argc; ++i) {
        const std::string arg = argv[i];
        const bool has_value = i + 1 < argc;
        if (arg == "--prompt" && has_value) prompt = argv[++i];
        else if (arg == "--max-new-tokens" && has_value) max_new_tokens = std::strtoul(argv[++i], nullptr, 10);
        else if (arg == "--enhance" && has_value) style = argv[++i];
        else if (arg == "--instruction" && has_value) instruction = argv[++i];
        else if (arg == "--stream") stream = true;
        else images.push_back(arg);
    }
    try {
        dg::Runtime runtime;  // CPU; ONNX Runtime from DG_ORT_DYLIB_PATH or the usual places
        const dg::Vlm vlm = runtime.load_vlm(model_dir);
        std::cerr << "model: " << vlm.info() << "\n";

        // Captioning or a question: the images first, then the text. Enhancement: the style's
        // system prompt, the image (if any) and the instruction.
        dg::VlmParams params = style.empty() ? dg::VlmParams() : dg::VlmParams::enhance(style, instruction);
        for (const std::string &image : images) params.image_file(image);
        if (style.empty()) params.text(prompt);
        params.max_new_tokens(static_cast<std::uint32_t>(max_new_tokens));

        dg::TokenCallback on_token;
        if (stream) {
            on_token = [](const dg::VlmToken &token) {
                std::cerr << token.text << std::flush;
                return true;  // false would cancel the request
            };
        }
        const dg::VlmResult result = vlm.generate(params, on_token);
        if (stream) std::cerr << "\n";

        if (style.empty()) std::cout << "answer: " << result.text() << "\n";
        else std::cout << "enhanced prompt: " << result.enhanced_prompt() << "\n";
        std::cout << "token ids:";
        for (std::int64_t id : result.token_ids()) std::cout << " " << id;
        std::cout << "\n"
                  << result.prompt_tokens() << " prompt tokens, finish " << result.finish_reason()
                  << ", timings " << result.timings() << "\n";
    } catch (const dg::Error &e) {
        std::cerr << "error " << e.raw_code() << " (" << dg::to_string(e.code()) << "): " << e.what()
                  << "\n";
        return 1;
    }
    return 0;
}
