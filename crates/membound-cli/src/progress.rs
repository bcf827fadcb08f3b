//! Progress bars that appear only when work takes more than a moment.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Work shorter than this shows no bar at all.
const SHOW_AFTER: Duration = Duration::from_millis(400);

/// A bar over `len` steps that stays hidden until [`SHOW_AFTER`] has passed
/// (and always when stderr is not a terminal, which indicatif checks).
#[derive(Clone)]
pub struct LazyBar {
    bar: ProgressBar,
}

impl LazyBar {
    pub fn new(len: u64, what: &str) -> Self {
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>12} [{bar:40.cyan/blue}] {pos}/{len} {wide_msg:.dim} ({eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        Self { bar }
    }

    /// Advances by one step, naming the item just finished.
    pub fn step(&self) {
        self.bar.inc(1);
        if self.bar.is_hidden() && self.bar.elapsed() > SHOW_AFTER {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
