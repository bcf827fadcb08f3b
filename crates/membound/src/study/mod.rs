//! The compression study of the research notes, sections 3–4, made
//! rerunnable: [`synthetic`] reproduces table 3.1 with a seeded generator,
//! [`weights`] runs every codec setting on every 2-D weight of a model.
//!
//! Results are plain serialisable structs; each study renders itself as
//! [`Table`]s (markdown or CSV). Plotting and progress bars live in the CLI.

pub mod notes;
mod report;
pub mod synthetic;
mod table;
pub mod weights;

pub use table::Table;
pub use table::{db, delta, num, percent, ratio};
