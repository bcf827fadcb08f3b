//! membound-gpu
