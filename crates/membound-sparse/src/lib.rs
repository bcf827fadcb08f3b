//! membound-sparse
