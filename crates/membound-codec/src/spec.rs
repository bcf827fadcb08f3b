//! Codec specs: `name:key=value,key=value`.

use std::collections::BTreeMap;

use crate::{Error, Result};

/// A parsed spec: a codec name and its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// The text as given.
    pub text: String,
    /// Codec name, e.g. `affine`.
    pub name: String,
    /// Settings in key order.
    pub params: BTreeMap<String, String>,
}

impl Spec {
    /// Parses `name` or `name:key=value,...`.
    pub fn parse(text: &str) -> Result<Self> {
        let err = |problem: String| Error::Spec {
            spec: text.into(),
            problem,
        };
        let (name, rest) = text.split_once(':').unwrap_or((text, ""));
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() {
            return Err(err("empty codec name".into()));
        }
        let mut params = BTreeMap::new();
        for kv in rest.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| err(format!("{kv:?} is not key=value")))?;
            let k = k.trim().to_ascii_lowercase();
            if params.insert(k.clone(), v.trim().to_string()).is_some() {
                return Err(err(format!("{k} is given twice")));
            }
        }
        Ok(Self {
            text: text.into(),
            name,
            params,
        })
    }

    /// Takes setting `key`, parsed, or `default` if absent.
    pub fn take<T: std::str::FromStr>(&mut self, key: &str, default: T) -> Result<T> {
        match self.params.remove(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| Error::Spec {
                spec: self.text.clone(),
                problem: format!("{key}={v:?} is not a valid value"),
            }),
        }
    }

    /// Fails if any setting was not taken: catches typos like `bit=4`.
    pub fn finish(&self, accepted: &[&str]) -> Result<()> {
        match self.params.keys().next() {
            None => Ok(()),
            Some(k) => Err(Error::Spec {
                spec: self.text.clone(),
                problem: format!(
                    "unknown setting {k:?} for {}; accepted: {}",
                    self.name,
                    accepted.join(", ")
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let mut s = Spec::parse("affine:bits=4, group=64").unwrap();
        assert_eq!(s.name, "affine");
        assert_eq!(s.take("bits", 0u32).unwrap(), 4);
        assert_eq!(s.take("scale", "f16".to_string()).unwrap(), "f16");
        assert!(s.finish(&[]).is_err(), "group was not taken");
        assert!(Spec::parse("affine:bits").is_err());
        assert!(Spec::parse("affine:bits=4,bits=3").is_err());
        assert!(Spec::parse(":x=1").is_err());
        let mut s = Spec::parse("affine:bits=four").unwrap();
        assert!(s.take("bits", 0u32).is_err());
    }
}
