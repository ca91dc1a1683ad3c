//! # nexusquant-core
//!
//! The pure-Rust core of nexusquant-kv: a KV-cache codec that rotates head-vectors with a
//! randomized Hadamard transform, scales each by one fp16 factor and codes it on the E8 lattice
//! (a Voronoi code of `E8 / 2^b E8`) at exactly `b` bits per element; plus the `.nqkv` container
//! format and host/disk stores. No Python here: the bindings live in `nexusquant-py`.
//!
//! The codec's arithmetic is specified to the order of floating-point operations in
//! `docs/codec.md`, so this crate, the CUDA kernels and the torch reference agree bit for bit.

#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod codec;
pub mod format;
pub mod store;
