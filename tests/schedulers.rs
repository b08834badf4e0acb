//! Scheduler parity against diffusers 0.39.0 goldens (models/make_scheduler_goldens.py).
//!
//! Each golden case drives a scheduler like a pipeline does, with a toy model
//! `0.1 * scaled_input + f32(0.05 * sin(t / 100))`, replaying the noise diffusers drew.
use diffgentor::rng::NoiseSource;
use diffgentor::schedulers::{create, names, Scheduler, SchedulerError};
use ndarray::{ArrayD, IxDyn};
use serde_json::{json, Value};

/// Parity bound for sample values: |a - b| <= TOL * max(1, |b|).
const TOL: f32 = 1e-5;

const SD15: &str = r#"{"beta_end":0.012,"beta_schedule":"scaled_linear","beta_start":0.00085,
    "clip_sample":false,"num_train_timesteps":1000,"set_alpha_to_one":false,
    "skip_prk_steps":true,"steps_offset":1}"#;

fn sd15() -> Value {
    serde_json::from_str(SD15).unwrap()
}

/// Replays the noise tensors recorded from diffusers' `randn_tensor`, in order.
struct Replay {
    draws: Vec<Vec<f32>>,
    next: usize,
}

impl NoiseSource for Replay {
    fn fill_randn(&mut self, out: &mut [f32]) {
        let draw = self
            .draws
            .get(self.next)
            .unwrap_or_else(|| panic!("unexpected noise draw #{}", self.next));
        assert_eq!(
            draw.len(),
            out.len(),
            "noise draw #{} has the wrong size",
            self.next
        );
        out.copy_from_slice(draw);
        self.next += 1;
    }
}

fn golden(name: &str) -> Value {
    let path = format!(
        "{}/tests/golden/schedulers/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn tensor(shape: &[usize], v: &Value) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), floats(v)).unwrap()
}

/// numpy.linspace(start, stop, n) in float64 (FLUX's default sigmas).
fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    v[n - 1] = stop;
    v
}

/// Largest |a - b|, largest |a - b| / max(floor, |b|), and whether all are within TOL.
fn compare(a: &ArrayD<f32>, b: &[f32], floor: f32) -> (f32, f32, bool) {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .fold((0.0f32, 0.0f32, true), |(m, r, ok), (&x, &y)| {
            let d = (x - y).abs();
            let rel = d / y.abs().max(floor);
            (m.max(d), r.max(rel), ok && rel <= TOL)
        })
}

fn set_steps(s: &mut dyn Scheduler, case: &Value) {
    let steps = case["steps"].as_u64().unwrap() as usize;
    let mu = case["mu"].as_f64();
    if case["flux_sigmas"].as_bool().unwrap_or(false) {
        s.set_custom_sigmas(&linspace(1.0, 1.0 / steps as f64, steps), mu)
            .unwrap();
    } else if let Some(mu) = mu {
        s.set_timesteps_with_mu(steps, mu).unwrap();
    } else {
        s.set_timesteps(steps).unwrap();
    }
}

/// Runs every golden case of one scheduler name; returns the max abs and relative errors.
fn check_scheduler(name: &str) -> (f32, f32) {
    let doc = golden(name);
    let (mut worst, mut worst_rel) = (0.0f32, 0.0f32);
    for case in doc["cases"].as_array().unwrap() {
        let id = format!("{name}/{}", case["id"].as_str().unwrap());
        let shape: Vec<usize> = case["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let mut s = create(Some(name), &case["config"]).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(s.name(), name, "{id}");
        set_steps(s.as_mut(), case);

        let want_ts = floats(&case["timesteps"]);
        if case["config"]["use_karras_sigmas"] == json!(true) && (name == "euler" || name == "heun")
        {
            // Fractional karras timesteps inherit torch's MKL sqrt rounding (<= 0.75 ulp,
            // not reproducible): allow 1e-6 relative.
            let close = s
                .timesteps()
                .iter()
                .zip(&want_ts)
                .all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs().max(1.0));
            assert!(
                close && s.timesteps().len() == want_ts.len(),
                "{id}: {:?} vs {want_ts:?}",
                s.timesteps()
            );
        } else {
            assert_eq!(s.timesteps(), &want_ts[..], "{id}: timesteps");
        }
        let ins = s.init_noise_sigma();
        let want_ins = case["init_noise_sigma"].as_f64().unwrap() as f32;
        // Also a torch sqrt result (1 ulp apart where MKL rounds the other way).
        assert!(
            (ins - want_ins).abs() <= 1e-6 * want_ins,
            "{id}: init_noise_sigma {ins} vs {want_ins}"
        );

        // Zero-terminal-SNR starts at sigma ~4096: rounding of intermediates that large
        // (and torch's own sqrt rounding of that sigma) is absolute, not relative.
        let floor = if ins > 100.0 { ins } else { 1.0 };
        let x_t = tensor(&shape, &case["x_t"]);
        let mut latents = x_t.mapv(|x| x * ins);
        let scaled_at: Vec<(usize, &Value)> = case["scaled"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["step_index"].as_u64().unwrap() as usize, &e["values"]))
            .collect();
        let traj = case["trajectory"].as_array().unwrap();
        assert_eq!(traj.len(), want_ts.len(), "{id}: trajectory length");
        let mut noise = Replay {
            draws: case["noise"]
                .as_array()
                .unwrap()
                .iter()
                .map(floats)
                .collect(),
            next: 0,
        };

        for (i, &t) in want_ts.iter().enumerate() {
            let mut scaled = latents.clone();
            s.scale_model_input(scaled.view_mut(), i);
            if let Some((_, want)) = scaled_at.iter().find(|(k, _)| *k == i) {
                let (err, rel, ok) = compare(&scaled, &floats(want), floor);
                assert!(ok, "{id}: scale_model_input at step {i}: max abs err {err}");
                (worst, worst_rel) = (worst.max(err), worst_rel.max(rel));
            }
            let c = (0.05 * (t as f64 / 100.0).sin()) as f32;
            let model_output = scaled.mapv(|x| x * 0.1 + c);
            s.step(model_output.view(), i, latents.view_mut(), &mut noise)
                .unwrap_or_else(|e| panic!("{id}: {e}"));
            let (err, rel, ok) = compare(&latents, &floats(&traj[i]), floor);
            if std::env::var("SCHED_DEBUG").is_ok() {
                let mag = latents.iter().fold(0.0f32, |m, x| m.max(x.abs()));
                println!("{id} step {i} err {err:e} max|x| {mag}");
            }
            assert!(ok, "{id}: sample after step {i}: max abs err {err}");
            (worst, worst_rel) = (worst.max(err), worst_rel.max(rel));
        }
        assert_eq!(noise.next, noise.draws.len(), "{id}: number of noise draws");

        let mut fresh = create(Some(name), &case["config"]).unwrap();
        set_steps(fresh.as_mut(), case);
        let k = case["add_noise"]["step_index"].as_u64().unwrap() as usize;
        let mut reversed: Vec<f32> = x_t.iter().copied().collect();
        reversed.reverse();
        let noise_t = ArrayD::from_shape_vec(IxDyn(&shape), reversed).unwrap();
        let mut noised = x_t.clone();
        fresh.add_noise(noised.view_mut(), noise_t.view(), k);
        let (err, rel, ok) = compare(&noised, &floats(&case["add_noise"]["values"]), floor);
        assert!(ok, "{id}: add_noise: max abs err {err}");
        (worst, worst_rel) = (worst.max(err), worst_rel.max(rel));
    }
    println!("{name}: vs diffusers max abs err {worst:e}, max rel err {worst_rel:e}");
    (worst, worst_rel)
}

#[test]
fn ddim_matches_diffusers() {
    check_scheduler("ddim");
}

#[test]
fn pndm_matches_diffusers() {
    check_scheduler("pndm");
}

#[test]
fn euler_matches_diffusers() {
    check_scheduler("euler");
}

#[test]
fn euler_ancestral_matches_diffusers() {
    check_scheduler("euler_a");
}

#[test]
fn dpmpp_2m_matches_diffusers() {
    check_scheduler("dpmpp_2m");
}

#[test]
fn dpmpp_2m_karras_matches_diffusers() {
    check_scheduler("dpmpp_2m_karras");
}

#[test]
fn heun_matches_diffusers() {
    check_scheduler("heun");
}

#[test]
fn lcm_matches_diffusers() {
    check_scheduler("lcm");
}

#[test]
fn flow_match_euler_matches_diffusers() {
    check_scheduler("flow_match_euler");
}

#[test]
fn every_name_has_goldens_and_builds_from_sd15() {
    for name in names() {
        assert_eq!(golden(name)["scheduler"], json!(name));
        let mut s = create(Some(name), &sd15()).unwrap();
        s.set_timesteps(20).unwrap();
        assert!(!s.timesteps().is_empty(), "{name}");
    }
}

#[test]
fn class_names_and_class_name_key_resolve() {
    let cases = [
        ("DDIMScheduler", "ddim"),
        ("PNDMScheduler", "pndm"),
        ("EulerDiscreteScheduler", "euler"),
        ("EulerAncestralDiscreteScheduler", "euler_a"),
        ("DPMSolverMultistepScheduler", "dpmpp_2m"),
        ("HeunDiscreteScheduler", "heun"),
        ("LCMScheduler", "lcm"),
        ("FlowMatchEulerDiscreteScheduler", "flow_match_euler"),
    ];
    for (class, short) in cases {
        assert_eq!(create(Some(class), &sd15()).unwrap().name(), short);
        let mut cfg = sd15();
        cfg["_class_name"] = json!(class);
        assert_eq!(create(None, &cfg).unwrap().name(), short);
    }
    let mut cfg = sd15();
    cfg["use_karras_sigmas"] = json!(true);
    assert_eq!(
        create(Some("DPMSolverMultistepScheduler"), &cfg)
            .unwrap()
            .name(),
        "dpmpp_2m_karras"
    );
    assert!(matches!(
        create(None, &sd15()),
        Err(SchedulerError::MissingName)
    ));
}

#[test]
fn unknown_name_lists_known_names() {
    let err = create(Some("warp_drive"), &sd15()).err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, SchedulerError::UnknownScheduler { .. }));
    assert!(msg.contains("warp_drive"), "{msg}");
    for name in names() {
        assert!(msg.contains(name), "{msg} lacks {name}");
    }
}

#[test]
fn unsupported_config_values_name_key_and_value() {
    let cases = [
        ("euler", "beta_schedule", json!("foo")),
        ("ddim", "timestep_spacing", json!("sideways")),
        ("ddim", "prediction_type", json!("noise")),
        ("euler_a", "prediction_type", json!("sample")),
        ("pndm", "prediction_type", json!("sample")),
        ("dpmpp_2m", "algorithm_type", json!("dpmsolver")),
        ("dpmpp_2m", "solver_order", json!(4)),
        ("ddim", "thresholding", json!(true)),
        ("lcm", "thresholding", json!(true)),
        ("flow_match_euler", "time_shift_type", json!("cubic")),
    ];
    for (name, key, value) in cases {
        let mut cfg = sd15();
        cfg[key] = value.clone();
        let err = create(Some(name), &cfg)
            .err()
            .unwrap_or_else(|| panic!("{name}: {key} = {value} accepted"));
        let msg = err.to_string();
        assert!(
            matches!(err, SchedulerError::UnsupportedConfig { .. }),
            "{msg}"
        );
        assert!(msg.contains(key), "{msg}");
        let shown = value
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        assert!(msg.contains(&shown), "{msg}");
    }
    let mut cfg = sd15();
    cfg["num_train_timesteps"] = json!("many");
    assert!(matches!(
        create(Some("ddim"), &cfg),
        Err(SchedulerError::InvalidConfig { .. })
    ));
}

#[test]
fn bad_step_counts_are_errors() {
    for name in names() {
        let mut s = create(Some(name), &sd15()).unwrap();
        assert!(
            matches!(s.set_timesteps(0), Err(SchedulerError::InvalidSteps { .. })),
            "{name}"
        );
        assert!(
            matches!(
                s.set_timesteps(1001),
                Err(SchedulerError::InvalidSteps { .. })
            ),
            "{name}"
        );
    }
    // LCM's schedule is a subset of original_inference_steps (50).
    assert!(create(Some("lcm"), &sd15())
        .unwrap()
        .set_timesteps(51)
        .is_err());
}

#[test]
fn step_misuse_is_an_error_not_a_panic() {
    let mut noise = Replay {
        draws: Vec::new(),
        next: 0,
    };
    let mo = ArrayD::<f32>::zeros(IxDyn(&[1, 4, 2, 2]));
    let mut x = ArrayD::<f32>::zeros(IxDyn(&[1, 4, 2, 2]));
    for name in names() {
        let mut s = create(Some(name), &sd15()).unwrap();
        let r = s.step(mo.view(), 0, x.view_mut(), &mut noise);
        assert!(
            matches!(r, Err(SchedulerError::NotInitialized { .. })),
            "{name}: {r:?}"
        );
        s.set_timesteps(4).unwrap();
        let n = s.timesteps().len();
        let r = s.step(mo.view(), n, x.view_mut(), &mut noise);
        assert!(
            matches!(r, Err(SchedulerError::StepIndexOutOfRange { .. })),
            "{name}: {r:?}"
        );
        let wrong = ArrayD::<f32>::zeros(IxDyn(&[1, 4, 2, 3]));
        let r = s.step(wrong.view(), 0, x.view_mut(), &mut noise);
        assert!(
            matches!(r, Err(SchedulerError::ShapeMismatch { .. })),
            "{name}: {r:?}"
        );
    }
}

#[test]
fn dynamic_shifting_requires_mu_and_exposes_flux_shift() {
    let cfg = json!({"use_dynamic_shifting": true, "base_shift": 0.5, "max_shift": 1.15,
        "base_image_seq_len": 256, "max_image_seq_len": 4096});
    let mut s = create(Some("flow_match_euler"), &cfg).unwrap();
    assert!(s.set_timesteps(8).is_err());
    s.set_timesteps_with_mu(8, 0.8).unwrap();
    assert_eq!(s.timesteps().len(), 8);
    let f = diffgentor::schedulers::FlowMatchEulerScheduler::from_config(&cfg).unwrap();
    assert!((f.mu_for_image_seq_len(256) - 0.5).abs() < 1e-12);
    assert!((f.mu_for_image_seq_len(4096) - 1.15).abs() < 1e-12);
    // Other schedulers have no custom sigma schedule.
    let mut e = create(Some("euler"), &sd15()).unwrap();
    assert!(e.set_custom_sigmas(&[1.0, 0.5], None).is_err());
}
