//! NF4: 16 normal quantiles with absmax blocks.

use crate::{Codec, Error, Result, Spec};

/// Builds this module's codec from a parsed spec.
pub(crate) fn from_spec(spec: Spec) -> Result<Box<dyn Codec>> {
    Err(Error::Spec { spec: spec.text, problem: "not implemented yet".into() })
}
