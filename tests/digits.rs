//! The trained digits model draws the digit the prompt asks for, with the package's own defaults.
//! Judged by a logistic-regression classifier trained on scikit-learn's digits
//! (tests/data/digits_classifier.json, written by models/digits/train.py).
mod common;

use diffgentor::{Image, Request};
use serde_json::Value;

struct Classifier {
    weights: Vec<Vec<f32>>,
    bias: Vec<f32>,
}

impl Classifier {
    fn load() -> Classifier {
        let path = common::repo().join("tests/data/digits_classifier.json");
        let json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let floats = |v: &Value| -> Vec<f32> {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        };
        Classifier {
            weights: json["weights"]
                .as_array()
                .unwrap()
                .iter()
                .map(floats)
                .collect(),
            bias: floats(&json["bias"]),
        }
    }

    /// Input: the 16x16 image as gray = mean(R, G, B) / 255, row-major.
    fn classify(&self, image: &Image) -> usize {
        assert_eq!((image.width, image.height), (16, 16));
        let gray: Vec<f32> = image
            .pixels
            .chunks_exact(3)
            .map(|p| (f32::from(p[0]) + f32::from(p[1]) + f32::from(p[2])) / 3.0 / 255.0)
            .collect();
        let scores: Vec<f32> = self
            .weights
            .iter()
            .zip(&self.bias)
            .map(|(w, b)| w.iter().zip(&gray).map(|(w, x)| w * x).sum::<f32>() + b)
            .collect();
        (0..scores.len())
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
            .unwrap()
    }
}

#[test]
fn draws_every_digit_it_is_asked_for_with_package_defaults() {
    let pipeline = common::pipeline("digits");
    let classifier = Classifier::load();
    let mut wrong = Vec::new();
    for seed in [1, 2] {
        for digit in 0..10 {
            let mut request = Request::new(format!("a handwritten digit {digit}"));
            request.seed = Some(seed);
            let output = pipeline.generate(&request).unwrap();
            let got = classifier.classify(&output.images[0]);
            if got != digit {
                wrong.push(format!(
                    "seed {seed}: asked for {digit}, classifier saw {got}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
