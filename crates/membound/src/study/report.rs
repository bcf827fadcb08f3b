//! The weights study as tables: 3.2, 4.1–4.5 beside the notes, tensor kinds,
//! and the Pareto frontier.

use std::collections::BTreeMap;

use super::notes::{self, Setting};
use super::table::{Table, db, delta, num, percent, ratio};
use super::weights::{
    AFFINE_ROW, AFFINE_TENSOR, BASELINE, POLY, POLYMSE, SettingSummary, WeightsStudy,
};

const SETTING_HEADERS: [&str; 9] = [
    "setting",
    "bits/weight",
    "× vs f32",
    "× vs f16",
    "mean × vs f32 (per tensor)",
    "SQNR dB (mean)",
    "SQNR dB (pooled)",
    "notes ×",
    "notes dB",
];

fn setting_row(label: &str, s: Option<&SettingSummary>, notes: Option<(f64, f64)>) -> Vec<String> {
    let dash = || "—".to_string();
    let mut row = vec![label.to_string()];
    match s {
        Some(s) => row.extend([
            num(s.bits_per_weight, 3),
            ratio(s.vs_f32),
            ratio(s.vs_f16),
            ratio(s.mean_vs_f32),
            db(s.mean_sqnr_db),
            db(s.pooled_sqnr_db),
        ]),
        None => row.extend((0..6).map(|_| dash())),
    }
    match notes {
        Some((c, d)) => row.extend([ratio(c), db(d)]),
        None => row.extend([dash(), dash()]),
    }
    row
}

/// A noise-power ratio in words: `4.0× more`, `0.27× (less)`, `2.5e-3× (less)`.
fn noise_text(r: f64) -> String {
    if !r.is_finite() {
        "n/a".into()
    } else if r >= 1.0 {
        format!("{} more", ratio(r))
    } else if r >= 0.01 {
        format!("{r:.2}× (less)")
    } else {
        format!("{r:.1e}× (less)")
    }
}

impl WeightsStudy {
    fn sampled_note(&self) -> String {
        let sampled: Vec<String> = self
            .tensors
            .iter()
            .filter(|t| t.studied_rows < t.rows)
            .map(|t| format!("`{}` ({} of {} rows)", t.name, t.studied_rows, t.rows))
            .collect();
        if sampled.is_empty() {
            String::new()
        } else {
            format!(
                " Row-sampled (seed {}; kurtosis over all weights, bits/weight of the full shape): {}.",
                self.options.seed,
                sampled.join(", ")
            )
        }
    }

    fn notes_table(
        &self,
        id: &str,
        title: &str,
        what: &str,
        rows: &[Setting],
        spec: impl Fn(usize) -> String,
        baseline: Option<(f64, f64)>,
    ) -> Table {
        let mut t = Table::new(id, title, &SETTING_HEADERS).with_note(format!(
            "{} over {} tensors of {}. bits/weight = total stored bits ÷ total weights, side information included \
             (coefficients, factors, indices at their stored precision). \"× vs f32\" and \"× vs f16\" are the same \
             storage against the two baselines; \"mean × vs f32\" averages each tensor's ratio, the way a per-layer \
             table reads. SQNR (mean) averages each tensor's dB; pooled = Σ signal ÷ Σ noise over all weights.{}",
            what,
            self.kurtosis.tensors,
            self.model,
            self.sampled_note()
        ));
        for n in rows {
            let s = spec(n.param);
            t.push(setting_row(
                &format!("`{s}`"),
                self.setting(&s),
                Some((n.compression, n.sqnr_db)),
            ));
        }
        for b in [BASELINE, AFFINE_ROW, AFFINE_TENSOR] {
            t.push(setting_row(&format!("`{b}`"), self.setting(b), None));
        }
        if let Some(b) = baseline {
            t.push(setting_row("notes' \"4-bit affine\"", None, Some(b)));
        }
        t
    }

    /// Every table of the weights study, in the notes' order, then kinds and
    /// the frontier.
    pub fn tables(&self) -> Vec<Table> {
        let k = &self.kurtosis;
        let mut t32 = Table::new(
            "table_3_2",
            "Table 3.2 — weight kurtosis and polynomial vs affine",
            &[
                "model",
                "tensors",
                "avg kurtosis",
                "median",
                "heavy-tail (>3)",
                "poly beats affine (per row)",
                "poly beats affine (g64)",
                "PolyMSE beats affine (per row)",
                "PolyMSE beats affine (g64)",
            ],
        )
        .with_note(format!(
            "Ours: every studied 2-D weight of {} ({}). Kurtosis = excess kurtosis of each tensor (Gaussian 0), averaged \
             over tensors. \"Beats\" = higher SQNR on that tensor: poly = `{POLY}`, PolyMSE = `{POLYMSE}` (per-row \
             cubics, 4 bits + 128 bits per row), affine = `{AFFINE_ROW}` or `{BASELINE}`. The notes' rows are their \
             own models and report only the polynomial against an unstated affine.",
            self.model, self.format
        ));
        t32.push(vec![
            format!("{} (ours)", self.model),
            k.tensors.to_string(),
            num(k.avg_kurtosis, 2),
            num(k.median_kurtosis, 2),
            percent(k.heavy_share),
            percent(k.poly_beats_affine_row),
            percent(k.poly_beats_affine_g64),
            percent(k.polymse_beats_affine_row),
            percent(k.polymse_beats_affine_g64),
        ]);
        for n in notes::TABLE_3_2 {
            t32.push(vec![
                format!("notes: {}", n.model),
                "—".into(),
                num(n.avg_kurtosis, 2),
                "—".into(),
                percent(n.heavy_share),
                "—".into(),
                "—".into(),
                percent(n.poly_wins),
                "—".into(),
            ]);
        }
        if let Some(r) = t32.rows.last_mut() {
            r[7] = format!("{} (\"PolyMSE identical\")", r[7]);
        }

        let mut kinds: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, t) in self.tensors.iter().enumerate() {
            kinds.entry(t.kind.as_str()).or_default().push(i);
        }
        let mut kt = Table::new(
            "table_3_2_kinds",
            "Kurtosis and 4-bit SQNR by tensor kind",
            &[
                "kind",
                "tensors",
                "shape",
                "dtype",
                "mean kurtosis",
                "max kurtosis",
                "heavy (>3)",
                "affine row dB",
                "affine g64 dB",
                "poly dB",
                "PolyMSE dB",
            ],
        )
        .with_note("Layer numbers replaced by `*`; SQNR averaged over the kind's tensors.");
        for (kind, idx) in &kinds {
            let ts: Vec<_> = idx.iter().map(|&i| &self.tensors[i]).collect();
            let kurt: Vec<f64> = ts.iter().map(|t| t.excess_kurtosis).collect();
            let avg = |setting: &str| {
                let v: Vec<f64> = ts
                    .iter()
                    .filter_map(|t| t.result(setting))
                    .map(|r| r.sqnr_db)
                    .filter(|s| s.is_finite())
                    .collect();
                if v.is_empty() {
                    f64::NAN
                } else {
                    v.iter().sum::<f64>() / v.len() as f64
                }
            };
            let t0 = ts[0];
            kt.push(vec![
                format!("`{kind}`"),
                ts.len().to_string(),
                format!("{}×{}", t0.rows, t0.cols),
                t0.dtype.clone(),
                num(kurt.iter().sum::<f64>() / kurt.len() as f64, 2),
                num(kurt.iter().copied().fold(f64::NEG_INFINITY, f64::max), 2),
                percent(kurt.iter().filter(|&&k| k > 3.0).count() as f64 / kurt.len() as f64),
                db(avg(AFFINE_ROW)),
                db(avg(BASELINE)),
                db(avg(POLY)),
                db(avg(POLYMSE)),
            ]);
        }

        let t41 = self.notes_table(
            "table_4_1",
            "Table 4.1 — positional polynomial (\"Option B\")",
            "`positional:degree=D`: each row a degree-D polynomial in the column index (orthonormal Gram basis, D + 1 \
             f16 coefficients per row)",
            &notes::TABLE_4_1,
            |d| format!("positional:degree={d}"),
            Some(notes::TABLE_4_1_AFFINE),
        );
        let t42 = self.notes_table(
            "table_4_2",
            "Table 4.2 — SVD low rank",
            "`svd:rank=R`: U·S and Vᵀ in f16",
            &notes::TABLE_4_2,
            |r| format!("svd:rank={r}"),
            Some(notes::TABLE_4_2_AFFINE),
        );
        let t43 = self.notes_table(
            "table_4_3",
            "Table 4.3 — DCT top-K per row",
            "`dct:k=K`: K coefficients per row, each a u16 index and an f16 value",
            &notes::TABLE_4_3,
            |k| format!("dct:k={k}"),
            None,
        );
        let t44 = self.notes_table(
            "table_4_4",
            "Table 4.4 — Kronecker sum",
            "`kron:rank=R`: Σ Aᵢ ⊗ Bᵢ, factors in f16, shapes from the divisors of rows and cols",
            &notes::TABLE_4_4,
            |r| format!("kron:rank={r}"),
            None,
        );

        let base = self
            .setting(BASELINE)
            .map_or(f64::NAN, |s| s.median_sqnr_db);
        let mut t45 = Table::new(
            "table_4_5",
            "Table 4.5 — summary by method",
            &[
                "method",
                "most compressed: setting, × vs f16 (× vs f32), dB",
                "best SQNR: setting, × vs f16, dB",
                "noise at best vs 4-bit g64",
                "notes: best compression",
                "notes: quality vs 4-bit",
            ],
        )
        .with_note(format!(
            "Per codec family over the settings run; SQNR is the median over tensors (a mean of dB is pulled up by \
             the few tensors a setting stores nearly exactly, e.g. rank 256 of a 192-row matrix). Noise = mean \
             squared error relative to `{BASELINE}`, 10^(Δ dB / 10) of the medians: \"4× more\" is four times its \
             noise power."
        ));
        let mut fams: Vec<&str> = Vec::new();
        for s in &self.settings {
            if !fams.contains(&s.family.as_str()) {
                fams.push(&s.family);
            }
        }
        let notes_for = |fam: &str| -> Option<(&str, &str)> {
            let i = match fam {
                "positional" => 0,
                "svd" => 1,
                "dct" => 2,
                "kron" => 3,
                "affine" => 4,
                _ => return None,
            };
            Some((notes::TABLE_4_5[i].1, notes::TABLE_4_5[i].2))
        };
        for fam in fams {
            let ss: Vec<&SettingSummary> = self
                .settings
                .iter()
                .filter(|s| s.family == fam && !s.median_sqnr_db.is_nan())
                .collect();
            let Some(most) = ss.iter().max_by(|a, b| a.vs_f16.total_cmp(&b.vs_f16)) else {
                continue;
            };
            let Some(best) = ss
                .iter()
                .max_by(|a, b| a.median_sqnr_db.total_cmp(&b.median_sqnr_db))
            else {
                continue;
            };
            let (nc, nq) = notes_for(fam).unwrap_or(("—", "—"));
            t45.push(vec![
                fam.to_string(),
                format!(
                    "`{}`, {} ({}), {} dB",
                    most.setting,
                    ratio(most.vs_f16),
                    ratio(most.vs_f32),
                    db(most.median_sqnr_db)
                ),
                format!(
                    "`{}`, {}, {} dB",
                    best.setting,
                    ratio(best.vs_f16),
                    db(best.median_sqnr_db)
                ),
                noise_text(10f64.powf((base - best.median_sqnr_db) / 10.0)),
                nc.to_string(),
                nq.to_string(),
            ]);
        }

        let base_mean = self.setting(BASELINE).map_or(f64::NAN, |s| s.mean_sqnr_db);
        let mut order: Vec<&SettingSummary> = self.settings.iter().collect();
        order.sort_by(|a, b| {
            a.bits_per_weight
                .total_cmp(&b.bits_per_weight)
                .then(b.mean_sqnr_db.total_cmp(&a.mean_sqnr_db))
        });
        let mut pareto = Table::new(
            "pareto",
            "Every setting by bits/weight; ★ = on the Pareto frontier (no setting has fewer bits and a higher mean SQNR)",
            &["setting", "bits/weight", "× vs f16", "× vs f32", "SQNR dB (mean)", "median", "pooled", "Δ vs 4-bit g64", "exact", "seconds", "frontier"],
        )
        .with_note(format!(
            "{} tensors of {}, {:.1} s on {} threads in all.{}{}",
            self.kurtosis.tensors,
            self.model,
            self.seconds,
            self.threads,
            self.sampled_note(),
            if self.skipped.is_empty() {
                String::new()
            } else {
                format!(" Not studied: {} tensors (1-D, integer, or under 16×16).", self.skipped.len())
            }
        ));
        for s in order {
            pareto.push(vec![
                format!("`{}`", s.setting),
                num(s.bits_per_weight, 3),
                ratio(s.vs_f16),
                ratio(s.vs_f32),
                db(s.mean_sqnr_db),
                db(s.median_sqnr_db),
                db(s.pooled_sqnr_db),
                delta(s.mean_sqnr_db - base_mean),
                s.exact.to_string(),
                num(s.seconds, 1),
                if s.on_frontier {
                    "★".into()
                } else {
                    String::new()
                },
            ]);
        }
        vec![t32, kt, t41, t42, t43, t44, t45, pareto]
    }
}
