//! Plain result tables: a title, a header and rows of cells, rendered as
//! markdown or CSV. The studies build them; the CLI only prints or saves them.

use serde::Serialize;

/// One table of a study, ready to render.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Table {
    /// Short machine-friendly name, used for CSV file names (`table_3_1`).
    pub id: String,
    /// Human title, e.g. `Table 3.1 — synthetic distributions`.
    pub title: String,
    /// Column headers.
    pub headers: Vec<String>,
    /// Rows of cells, each as long as `headers`.
    pub rows: Vec<Vec<String>>,
    /// What the table measures and how, printed under it.
    pub note: String,
}

impl Table {
    /// An empty table with these headers.
    pub fn new(id: &str, title: &str, headers: &[&str]) -> Self {
        Self {
            id: id.into(),
            title: title.into(),
            headers: headers.iter().map(|h| (*h).to_string()).collect(),
            rows: Vec::new(),
            note: String::new(),
        }
    }

    /// Sets the note printed under the table.
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = note.into();
        self
    }

    /// Appends a row; short rows are padded with empty cells.
    pub fn push(&mut self, mut row: Vec<String>) {
        row.resize(self.headers.len().max(row.len()), String::new());
        self.rows.push(row);
    }

    /// GitHub-flavoured markdown: `### title`, the table, then the note.
    pub fn to_markdown(&self) -> String {
        let esc = |s: &str| s.replace('|', "\\|");
        let mut out = format!("### {}\n\n", self.title);
        out += &format!(
            "| {} |\n",
            self.headers
                .iter()
                .map(|h| esc(h))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        out += &format!("|{}\n", "---|".repeat(self.headers.len()));
        for r in &self.rows {
            out += &format!(
                "| {} |\n",
                r.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | ")
            );
        }
        if !self.note.is_empty() {
            out += &format!("\n{}\n", self.note);
        }
        out
    }

    /// RFC 4180 CSV: the header line then one line per row.
    pub fn to_csv(&self) -> String {
        let field = |s: &str| {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        let line = |cells: &[String]| cells.iter().map(|c| field(c)).collect::<Vec<_>>().join(",");
        let mut out = line(&self.headers) + "\n";
        for r in &self.rows {
            out += &(line(r) + "\n");
        }
        out
    }
}

/// Formats a dB value with two decimals; `∞`/`−∞` for exact or empty cases.
pub fn db(x: f64) -> String {
    if x == f64::INFINITY {
        "∞".into()
    } else if x == f64::NEG_INFINITY {
        "−∞".into()
    } else if x.is_nan() {
        "n/a".into()
    } else {
        format!("{x:.2}")
    }
}

/// Formats a signed dB difference (`+0.56`, `−1.18`).
pub fn delta(x: f64) -> String {
    if x.is_finite() {
        format!("{x:+.2}")
    } else {
        db(x)
    }
}

/// Formats a ratio such as a compression factor: `384×`, `9.0×`, `2.40×`.
pub fn ratio(x: f64) -> String {
    if !x.is_finite() {
        return db(x);
    }
    if x >= 100.0 {
        format!("{x:.0}×")
    } else if x >= 10.0 {
        format!("{x:.1}×")
    } else {
        format!("{x:.2}×")
    }
}

/// Formats a share in `[0, 1]` as a percentage.
pub fn percent(x: f64) -> String {
    if x.is_nan() {
        "n/a".into()
    } else {
        format!("{:.0}%", 100.0 * x)
    }
}

/// Formats a plain number with `decimals` decimals, `n/a` for NaN.
pub fn num(x: f64, decimals: usize) -> String {
    if x.is_nan() {
        "n/a".into()
    } else {
        format!("{x:.decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_markdown_and_csv() {
        let mut t = Table::new("t", "T", &["a", "b|c"]).with_note("n");
        t.push(vec!["1".into(), "x,\"y\"".into()]);
        t.push(vec!["2".into()]);
        let md = t.to_markdown();
        assert!(
            md.contains("| a | b\\|c |\n|---|---|\n| 1 | x,\"y\" |\n| 2 |  |"),
            "{md}"
        );
        assert_eq!(t.to_csv(), "a,b|c\n1,\"x,\"\"y\"\"\"\n2,\n");
        assert_eq!(
            (
                db(f64::INFINITY),
                delta(-1.184),
                ratio(384.2),
                percent(0.46)
            ),
            ("∞".into(), "-1.18".into(), "384×".into(), "46%".into())
        );
    }
}
