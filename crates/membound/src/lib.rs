//! membound
