// digits: one image from the diffgentor digits model through the C++ binding.
// usage: digits [MODEL_DIR [OUTPUT.png [DIGIT]]]
#include <diffgentor.hpp>

#include <cstdio>
#include <iostream>
#include <string>

int main(int argc, char **argv) {
    const std::string model_dir = argc > 1 ? argv[1] : "models/digits";
    const std::string output = argc > 2 ? argv[2] : "digit3.png";
    const std::string digit = argc > 3 ? argv[3] : "3";
    try {
        dg::Runtime runtime;  // CPU; ONNX Runtime from DG_ORT_DYLIB_PATH or the usual places
        dg::Pipeline pipeline = runtime.load(model_dir);

        dg::Params params;
        params.prompt("a handwritten digit " + digit).seed(42).steps(20).guidance_scale(3.0f);

        dg::Images images = pipeline.generate(params, [](const dg::Progress &p) {
            std::cerr << "step " << p.step << "/" << p.total << "\n";
            return true;  // false would cancel the request
        });
        const dg::Image &image = images[0];
        std::cout << image.width() << "x" << image.height() << " RGB image, seed " << images.seed()
                  << "\n";
        image.write_png(output);
        std::cout << "wrote " << output << "\n";
    } catch (const dg::Error &e) {
        std::cerr << "error " << e.raw_code() << " (" << dg::to_string(e.code()) << "): " << e.what()
                  << "\n";
        return 1;
    }
    return 0;
}
