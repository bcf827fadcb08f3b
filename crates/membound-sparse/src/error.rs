//! The one error type of this crate.

/// What can go wrong in the sparse reference code.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// Buffers whose lengths disagree with the stated shape.
    #[error("{what}: expected {expected} values, got {found}")]
    Shape {
        /// Which buffer.
        what: &'static str,
        /// Length implied by the shape.
        expected: usize,
        /// Length given.
        found: usize,
    },
    /// An argument outside its domain (a target sparsity outside [0, 1], a group size of 0, …).
    #[error("{0}")]
    Invalid(String),
    /// NaN or infinite input where finite values are required.
    #[error("{what}: value at index {index} is {value}")]
    NonFinite {
        /// Which buffer.
        what: &'static str,
        /// Position of the first bad value.
        index: usize,
        /// The value.
        value: f32,
    },
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn check_len(what: &'static str, expected: usize, found: usize) -> Result<()> {
    if expected == found {
        Ok(())
    } else {
        Err(Error::Shape {
            what,
            expected,
            found,
        })
    }
}

pub(crate) fn check_finite(what: &'static str, v: &[f32]) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(index) => Err(Error::NonFinite {
            what,
            index,
            value: v[index],
        }),
    }
}
