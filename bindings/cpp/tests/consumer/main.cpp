// Consumer of the C++ binding: one digit from models/digits. usage: consumer MODEL_DIR OUT.png
#include <diffgentor.hpp>

#include <iostream>

int main(int argc, char **argv) {
    if (argc < 3) {
        std::cerr << "usage: consumer MODEL_DIR OUT.png\n";
        return 2;
    }
    try {
        if (dg::abi_version() != DG_VERSION_MAJOR) {
            std::cerr << "header/library mismatch: " << dg::version() << "\n";
            return 1;
        }
        dg::Runtime runtime;
        dg::Pipeline pipeline = runtime.load(argv[1]);
        dg::Params params;
        params.prompt("a handwritten digit 5").seed(5).steps(5);
        dg::Images images = pipeline.generate(params);
        images[0].write_png(argv[2]);
        std::cout << "consumer: diffgentor " << dg::version() << ", wrote " << argv[2] << "\n";
    } catch (const dg::Error &e) {
        std::cerr << "consumer: " << dg::to_string(e.code()) << ": " << e.what() << "\n";
        return 1;
    }
    return 0;
}
