//! Locating the real models for tests.
#![allow(dead_code)]

use std::path::PathBuf;

use membound_tensor::registry::{self, RegistryModel};

/// Whether missing models fail the test (CI) instead of skipping it.
fn required() -> bool {
    std::env::var("MEMBOUND_REQUIRE_MODELS").is_ok_and(|v| v == "1")
}

fn missing(what: &str, how: &str) -> Option<PathBuf> {
    assert!(
        !required(),
        "{what} is missing and MEMBOUND_REQUIRE_MODELS=1: {how}"
    );
    eprintln!("SKIPPED: {what} is missing ({how})");
    None
}

/// The cached weights of a registry model, or `None` (with a printed reason).
pub fn registry_model(model: RegistryModel) -> Option<PathBuf> {
    model.locate().or_else(|| {
        missing(
            model.name,
            "run `membound models fetch` or ./scripts/test.sh",
        )
    })
}

/// The checkpoint and tokenizer of a llama2.c fixture, or `None`.
pub fn fixture(name: &str) -> Option<(PathBuf, PathBuf)> {
    registry::fixture(name).or_else(|| {
        missing(
            name,
            "expected ../shared/models beside the project, or $MEMBOUND_SHARED_MODELS",
        );
        None
    })
}
