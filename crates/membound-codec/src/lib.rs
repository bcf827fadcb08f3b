//! membound-codec
