//! Activation sparsity: the recorder's counts, calibration that holds on
//! held-out tokens, thresholds of 0 that change nothing, and the sidecar.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use membound::eval::EVAL_TEXT;
use membound::model::{ActivationHook, CpuLlama, Site};
use membound::run::Model;
use membound::sparsity::calibrate::{self, Sensitivity};
use membound::sparsity::{
    Method, Recorder, RecordingHook, ThresholdFile, ThresholdHook, parse_site_key, site_key,
    teacher_force,
};
use membound_tensor::registry;

fn llama2xs() -> Option<Model> {
    let Some((path, _)) = registry::fixture("llama2xs-280K") else {
        assert!(
            std::env::var("MEMBOUND_REQUIRE_MODELS").as_deref() != Ok("1"),
            "llama2xs-280K missing"
        );
        eprintln!("SKIPPED: llama2xs-280K not found (../shared/models)");
        return None;
    };
    Some(Model::load(&path).unwrap())
}

#[test]
fn recorder_counts_a_hand_computed_vector() {
    let rec = Arc::new(Mutex::new(Recorder::new(&[0.01, 0.5], &[0.25, 1.0])));
    let mut hook = RecordingHook(Arc::clone(&rec));
    // |x| = 0, 0.005, 0.2, 0.5, 1.3, 2.0: mean 4.005/6 = 0.6675.
    let mut x = [0.0, 0.005, -0.2, 0.5, -1.3, 2.0];
    hook.on_input(3, Site::Down, &mut x);
    hook.on_input(3, Site::Down, &mut [0.0, 0.0]);
    assert_eq!(
        x,
        [0.0, 0.005, -0.2, 0.5, -1.3, 2.0],
        "recording changes nothing"
    );
    let r = rec.lock().unwrap();
    let s = r.get(3, "down").unwrap();
    assert_eq!(s.vectors, 2);
    assert_eq!(s.count, 8);
    assert_eq!(s.exact_zeros, 3);
    // ≤ 0.01: the three zeros and 0.005; ≤ 0.5: also 0.2 and 0.5.
    assert_eq!(s.below_abs, [4, 6]);
    // < 0.25·0.6675 = 0.167: 0, 0.005; < 0.6675: also 0.2, 0.5. The
    // all-zero vector has mean 0, so nothing in it is strictly below.
    assert_eq!(s.below_rel, [2, 4]);
    assert_eq!(s.log10_hist.iter().sum::<u64>(), 5);
    assert!((s.zero_share() - 3.0 / 8.0).abs() < 1e-12);
    assert!((s.mean_abs() - 4.005 / 8.0).abs() < 1e-6);
    assert!(r.get(0, "down").is_none());
}

#[test]
fn site_keys_round_trip() {
    for l in [0, 7, 29] {
        for s in Site::ALL {
            assert_eq!(parse_site_key(&site_key(l, s)), Some((l, s)));
        }
    }
    for bad in [
        "layers.x.down",
        "layers.1.up",
        "layer.1.down",
        "layers.1",
        "",
    ] {
        assert_eq!(parse_site_key(bad), None, "{bad}");
    }
}

#[test]
fn sidecar_round_trip_and_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.json");
    let f = ThresholdFile {
        model: "llama2xs-280K".into(),
        target: 0.5,
        method: Method::Greedy,
        thresholds: BTreeMap::from([
            ("layers.0.down".to_string(), 0.0125),
            ("layers.3.qkv".to_string(), 0.0),
        ]),
    };
    f.save(&path).unwrap();
    assert_eq!(ThresholdFile::load(&path).unwrap(), f);
    // Nothing but the file itself is left in the folder.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let bad = [
        (
            r#"{"target":0.5,"method":"uniform","thresholds":{}}"#,
            "model",
        ),
        (
            r#"{"model":"m","method":"uniform","thresholds":{}}"#,
            "target",
        ),
        (r#"{"model":"m","target":0.5,"thresholds":{}}"#, "method"),
        (
            r#"{"model":"m","target":0.5,"method":"uniform"}"#,
            "thresholds",
        ),
        (
            r#"{"model":"m","target":0.5,"method":"uniform","thresholds":{"layers.0.down":NaN}}"#,
            "",
        ),
        (
            r#"{"model":"m","target":0.5,"method":"uniform","thresholds":{"layers.0.down":"NaN"}}"#,
            "",
        ),
        (
            r#"{"model":"m","target":0.5,"method":"uniform","thresholds":{"layers.0.down":-0.1}}"#,
            "finite and ≥ 0",
        ),
        (
            r#"{"model":"m","target":1.5,"method":"uniform","thresholds":{}}"#,
            "outside [0, 1]",
        ),
        (
            r#"{"model":"m","target":0.5,"method":"median","thresholds":{}}"#,
            "",
        ),
        (
            r#"{"model":"m","target":0.5,"method":"uniform","thresholds":{"layers.0.up":0.1}}"#,
            "layers.N",
        ),
        ("not json", ""),
    ];
    for (text, want) in bad {
        let e = ThresholdFile::from_json(text).unwrap_err().to_string();
        assert!(e.contains(want), "{text}: {e}");
    }
    // NaN or negative thresholds are refused when writing, too.
    let mut nan = f.clone();
    nan.thresholds.insert("layers.1.down".into(), f32::NAN);
    assert!(nan.save(&dir.path().join("nan.json")).is_err());
    assert!(!dir.path().join("nan.json").exists());
    // Keys past the model's layers are refused when applied.
    assert!(ThresholdHook::new(2, &f.thresholds).is_err());
    assert!(ThresholdHook::new(4, &f.thresholds).is_ok());
}

#[test]
fn greedy_levels_keep_the_weighted_average() {
    let sens: Vec<Sensitivity> = (0..4)
        .map(|l| Sensitivity {
            key: site_key(l, Site::Down),
            layer: l,
            site: Site::Down,
            weight: 100 * (l + 1),
            probe: 0.5,
            kl: [0.001, 0.1, 0.01, 1.0][l],
        })
        .collect();
    let total: f64 = sens.iter().map(|s| s.weight as f64).sum();
    for target in [0.0, 0.3, 0.5, 0.8] {
        let lv = calibrate::greedy_levels(&sens, target).unwrap();
        let avg: f64 = lv
            .iter()
            .zip(&sens)
            .map(|(x, s)| x * s.weight as f64)
            .sum::<f64>()
            / total;
        assert!((avg - target).abs() < 1e-9, "target {target}: {avg}");
        assert!(
            lv.iter()
                .all(|&x| (0.0..=calibrate::MAX_LEVEL).contains(&x))
        );
        if target > 0.0 {
            // The least sensitive unit gets at least the most sensitive one's level.
            assert!(lv[0] >= lv[3], "{lv:?}");
        }
    }
    assert!(calibrate::greedy_levels(&sens, 0.99).is_err());
}

#[test]
fn thresholds_of_zero_give_dense_logits() {
    let Some(m) = llama2xs() else { return };
    let cfg = m.config.clone();
    let tokens = m.tokenizer.encode(EVAL_TEXT, true).unwrap();
    let tokens = &tokens[..40];
    let mut dense = CpuLlama::new(cfg.clone(), m.weights.clone());
    let mut want = Vec::new();
    teacher_force(
        &mut dense,
        tokens,
        256,
        &mut |_, l| want.push(l),
        &mut |_, _| {},
    )
    .unwrap();
    let zero = membound::sparsity::threshold_map(cfg.n_layers, &Site::ALL, |_, _| 0.0);
    dense.set_hook(Some(Box::new(
        ThresholdHook::new(cfg.n_layers, &zero).unwrap(),
    )));
    let mut got = Vec::new();
    teacher_force(
        &mut dense,
        tokens,
        256,
        &mut |_, l| got.push(l),
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(got, want);
}

#[test]
fn calibration_holds_on_held_out_tokens() {
    let Some(m) = llama2xs() else { return };
    let cfg = m.config.clone();
    let tokens = m.tokenizer.encode(EVAL_TEXT, true).unwrap();
    let half = tokens.len() / 2;
    let (calib, held) = (&tokens[..384], &tokens[half..half + 384]);
    let mut model = CpuLlama::new(cfg.clone(), m.weights.clone());
    let mags = calibrate::collect(&mut model, calib, 256, &[Site::Down], &mut |_, _| {}).unwrap();
    for target in [0.25, 0.5, 0.7] {
        let th = calibrate::uniform(&mags, cfg.n_layers, &[Site::Down], target).unwrap();
        let got = calibrate::achieved(&mut model, held, 256, &th).unwrap();
        assert!(
            (got - target).abs() <= 0.02,
            "target {target}: {got} on held-out tokens"
        );
    }
}
