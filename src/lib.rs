//! libdiffgentor: run optimum/diffusers ONNX image-generation packages on ONNX Runtime with
//! diffusers' numerics.
//!
//! ```no_run
//! use diffgentor::{Pipeline, Request, Runtime, RuntimeOptions};
//!
//! # fn main() -> diffgentor::Result<()> {
//! let runtime = Runtime::new(RuntimeOptions::default())?;
//! let pipeline = Pipeline::load(runtime, "models/digits".as_ref())?;
//! let mut request = Request::new("a handwritten digit 7");
//! request.seed = Some(42);
//! let output = pipeline.generate(&request)?;
//! output.images[0].save_png("seven.png".as_ref(), &[])?;
//! # Ok(())
//! # }
//! ```
pub mod capi;
pub mod error;
pub mod generators;
pub mod image;
pub mod lora;
pub mod model;
pub mod npy;
pub mod pipelines;
pub mod request;
pub mod rng;
pub mod runtime;
pub mod schedulers;
pub mod vlm;

pub use error::{Error, ErrorCode, RemoteError, RemoteFailure, Result};
pub use image::Image;
pub use pipelines::Pipeline;
pub use request::{CancelToken, LoraUse, Output, Progress, Request};
pub use runtime::{ExecutionProvider, Runtime, RuntimeOptions};

/// Compiles the README's Rust example as a doctest so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The same for docs/vlm.md.
#[cfg(doctest)]
#[doc = include_str!("../docs/vlm.md")]
pub struct VlmDocDoctests;

/// The same for docs/lora.md.
#[cfg(doctest)]
#[doc = include_str!("../docs/lora.md")]
pub struct LoraDocDoctests;
