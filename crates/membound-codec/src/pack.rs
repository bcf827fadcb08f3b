//! Packing of integer codes into words and bytes.
