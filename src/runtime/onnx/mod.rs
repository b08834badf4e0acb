//! Reading and editing ONNX model files without a protobuf toolchain: the weight index LoRA maps
//! onto, initializer values, and promoting initializers to overridable graph inputs.
mod index;
mod model;
mod wire;

pub use index::{Layout, WeightIndex, WeightRef};
pub(crate) use model::promote;

#[cfg(test)]
mod tests;
