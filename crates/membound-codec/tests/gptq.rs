//! GPTQ and AWQ: Hessian accumulation, error reduction against
//! round-to-nearest, the output format, and bad input.

use membound_codec::{
    AffineCodec, AwqStats, Codec, GptqOptions, Group, Hessian, Matrix, ScaleDType, awq_search,
    codec_from_spec, decode, gptq, hessian_error,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn gauss(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
}

/// `n` inputs of width `cols` with correlated channels and a few large
/// ("salient") ones, like real activations; and a `rows × cols` weight.
fn layer(rows: usize, cols: usize, n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mix: Vec<f32> = (0..cols * cols).map(|_| gauss(&mut rng) * 0.3).collect();
    let mut x = vec![0f32; n * cols];
    for t in 0..n {
        let z: Vec<f32> = (0..cols).map(|_| gauss(&mut rng)).collect();
        for j in 0..cols {
            let mut v = z[j];
            for k in 0..cols.min(8) {
                v += mix[j * cols + k] * z[k];
            }
            if j % 17 == 3 {
                v *= 8.0;
            }
            x[t * cols + j] = v;
        }
    }
    let w = (0..rows * cols).map(|_| gauss(&mut rng) * 0.05).collect();
    (w, x)
}

fn hessian_of(x: &[f32], cols: usize) -> Vec<f64> {
    let mut h = Hessian::new(cols);
    for chunk in x.chunks(cols * 7) {
        h.add_batch(chunk).unwrap();
    }
    h.finish().unwrap()
}

/// ‖(W − Ŵ)·Xᵀ‖² directly.
fn output_err(w: &[f32], wh: &[f32], x: &[f32], cols: usize) -> f64 {
    let mut s = 0.0;
    for (wr, hr) in w.chunks(cols).zip(wh.chunks(cols)) {
        for xr in x.chunks(cols) {
            let d: f64 = wr
                .iter()
                .zip(hr)
                .zip(xr)
                .map(|((a, b), x)| f64::from(a - b) * f64::from(*x))
                .sum();
            s += d * d;
        }
    }
    s
}

#[test]
fn hessian_matches_dense_reference() {
    let (_, x) = layer(1, 24, 150, 1);
    let h = hessian_of(&x, 24);
    let n = 150.0;
    for i in 0..24 {
        for j in 0..24 {
            let want: f64 = (0..150)
                .map(|t| f64::from(x[t * 24 + i]) * f64::from(x[t * 24 + j]))
                .sum::<f64>()
                * 2.0
                / n;
            let got = h[i * 24 + j];
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                "{i},{j}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn gptq_beats_rtn_and_decodes() {
    let (rows, cols, n) = (96, 256, 512);
    let (w, x) = layer(rows, cols, n, 2);
    let h = hessian_of(&x, cols);
    for (bits, group, act_order) in [
        (3, Group::Size(64), false),
        (3, Group::Size(64), true),
        (4, Group::Size(128), false),
        (2, Group::Size(32), false),
        (3, Group::Row, false),
    ] {
        let codec = AffineCodec::new(bits, group, ScaleDType::F16).unwrap();
        let m = Matrix::new(rows, cols, &w).unwrap();
        let opts = GptqOptions {
            act_order,
            ..Default::default()
        };
        let e = gptq(&codec, m, &h, &opts).unwrap();
        // Same format as the plain codec: same spec, part names, shapes.
        let rtn = codec.encode(m).unwrap();
        assert_eq!(e.spec, rtn.spec);
        for (a, b) in e.parts.iter().zip(&rtn.parts) {
            assert_eq!((&a.name, a.dtype, &a.shape), (&b.name, b.dtype, &b.shape));
        }
        let wg = decode(&e).unwrap();
        assert_eq!(wg, codec_from_spec(&e.spec).unwrap().decode(&e).unwrap());
        let wr = codec.decode(&rtn).unwrap();
        let (eg, er) = (output_err(&w, &wg, &x, cols), output_err(&w, &wr, &x, cols));
        // The Hessian form is the same quantity, scaled by 2/n.
        let hg = hessian_error(&w, &wg, &h, cols).unwrap();
        assert!(
            (hg - eg * 2.0 / n as f64).abs() <= 1e-6 * hg.abs(),
            "{hg} vs {eg}"
        );
        eprintln!(
            "bits={bits} group={group} act_order={act_order}: GPTQ/RTN output error {:.3}",
            eg / er
        );
        assert!(
            eg < 0.8 * er,
            "bits={bits} {group:?} act_order={act_order}: GPTQ {eg} vs RTN {er}"
        );
    }
}

#[test]
fn dead_columns_become_zero() {
    let (rows, cols) = (8, 64);
    let (w, mut x) = layer(rows, cols, 100, 3);
    for t in 0..100 {
        x[t * cols + 5] = 0.0;
    }
    let h = hessian_of(&x, cols);
    let codec = AffineCodec::new(4, Group::Size(32), ScaleDType::F16).unwrap();
    let e = gptq(
        &codec,
        Matrix::new(rows, cols, &w).unwrap(),
        &h,
        &GptqOptions::default(),
    )
    .unwrap();
    let wq = decode(&e).unwrap();
    for r in 0..rows {
        assert!(wq[r * cols + 5].abs() < 0.02, "{}", wq[r * cols + 5]);
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let mut h = Hessian::new(4);
    let e = h.add_batch(&[]).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    let e = h.add_batch(&[1.0, 2.0, 3.0]).unwrap_err().to_string();
    assert!(e.contains("width 4"), "{e}");
    let e = h
        .add_batch(&[1.0, f32::NAN, 3.0, 4.0])
        .unwrap_err()
        .to_string();
    assert!(e.contains("NaN"), "{e}");
    let e = Hessian::new(4).finish().unwrap_err().to_string();
    assert!(e.contains("no calibration inputs"), "{e}");

    let codec = AffineCodec::default();
    let w = vec![0.5f32; 8 * 64];
    let m = Matrix::new(8, 64, &w).unwrap();
    let e = gptq(&codec, m, &[1.0; 10], &GptqOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("Hessian has 10 values"), "{e}");
    let mut hn = vec![0.0; 64 * 64];
    hn[3] = f64::NAN;
    let e = gptq(&codec, m, &hn, &GptqOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("NaN"), "{e}");
    let bad = GptqOptions {
        damp: -1.0,
        ..Default::default()
    };
    let e = gptq(&codec, m, &vec![1.0; 64 * 64], &bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("damping"), "{e}");
    // Rank-one H with no damping is singular.
    let nodamp = GptqOptions {
        damp: 0.0,
        ..Default::default()
    };
    let e = gptq(&codec, m, &vec![1.0; 64 * 64], &nodamp)
        .unwrap_err()
        .to_string();
    assert!(e.contains("positive definite"), "{e}");
    let mut wn = w.clone();
    wn[7] = f32::INFINITY;
    let e = gptq(
        &codec,
        Matrix::new(8, 64, &wn).unwrap(),
        &vec![0.0; 64 * 64],
        &GptqOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("inf"), "{e}");

    let mut s = AwqStats::new(4, 1, 10);
    assert!(
        s.add(&[1.0, 2.0])
            .unwrap_err()
            .to_string()
            .contains("width 2")
    );
    assert!(s.mean_abs().is_err());
}

#[test]
fn awq_is_no_worse_than_rtn_on_its_samples() {
    let (rows, cols, n) = (64, 128, 256);
    let (w, x) = layer(rows, cols, n, 4);
    let mut st = AwqStats::new(cols, 2, 64);
    for xr in x.chunks(cols) {
        st.add(xr).unwrap();
    }
    let codec = AffineCodec::new(3, Group::Size(64), ScaleDType::F16).unwrap();
    let m = Matrix::new(rows, cols, &w).unwrap();
    let c = awq_search(&codec, &[m, m], &st.mean_abs().unwrap(), st.samples(), 20).unwrap();
    eprintln!("AWQ alpha {} loss/RTN {:.3}", c.alpha, c.loss / c.rtn_loss);
    assert!(c.loss <= c.rtn_loss);
    assert!(c.alpha > 0.0, "salient channels should pull alpha above 0");
}
