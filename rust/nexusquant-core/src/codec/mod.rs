//! The E8 lattice codec, version 1 (`e8v1`), exactly as `docs/codec.md` specifies it.
//!
//! A head-vector of `d` values is rotated by a randomized Hadamard transform ([`rotation`]),
//! scaled by one fp16 factor and coded block by block (8 values) on the E8 lattice as a Voronoi
//! code of `E8 / 2^b E8` ([`e8`]): exactly `b` bits per value, packed LSB-first ([`pack`]), plus
//! 16 bits per head-vector for the scale.
//!
//! Entry points:
//! - [`encode_into`] / [`decode_into`] (or the same methods of a reusable [`Codec`]): batched
//!   over `N` head-vectors stored row after row, multi-threaded, for `f32`, `f16` and `bf16`.
//! - [`encode_vector`] / [`decode_vector`]: one head-vector, the spec written out literally
//!   (the oracle the batched kernels are tested against).
//! - [`scalar_roundtrip`]: the scalar baseline, for benchmarks and evaluation.
//!
//! ```
//! use nexusquant_core::codec::{decode_into, encode_into, CodecParams, Threads};
//! let p = CodecParams::new(128, 3, 0x1234)?;
//! let x: Vec<f32> = (0..4 * 128).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
//! let mut codes = vec![0u8; 4 * p.code_bytes()];
//! let mut scales = vec![0u16; 4];
//! encode_into(&p, &x, &mut codes, &mut scales, Threads::All)?;
//! let mut y = vec![0f32; x.len()];
//! decode_into(&p, &codes, &scales, &mut y, Threads::Count(1))?;
//! # Ok::<(), nexusquant_core::codec::CodecError>(())
//! ```

pub mod attend;
pub mod decode;
pub mod e8;
pub mod element;
pub mod encode;
pub mod fold;
mod kernel;
mod lanes;
pub mod pack;
pub mod params;
pub mod rotation;
pub mod scalar;
pub mod signs;
pub mod threads;

use rayon::prelude::*;

pub use decode::decode_vector;
pub use element::Element;
pub use encode::{encode_vector, NAN_SCALE};
pub use kernel::simd_level;
pub use params::{CodecError, CodecParams};
pub use rotation::Rotation;
pub use threads::{Threads, MAX_THREADS};

/// The number of clipping candidates of `docs/codec.md` §6 step 4.
pub const MAX_CANDIDATES: usize = 3;

/// The clipping candidates the encoder tries at `bits` unless told otherwise
/// ([`Codec::with_candidates`]): one up to 4 bits, where it meets the codec's SQNR targets at the
/// encode speed it promises and the other two add 0.03-0.44 dB, and all [`MAX_CANDIDATES`]
/// above, where they add 0.7-2.7 dB (iid Gaussian, head_dim 128). The KV cache of the Python
/// package asks for three at every width.
pub fn default_candidates(bits: u32) -> usize {
    if bits <= 4 {
        1
    } else {
        MAX_CANDIDATES
    }
}

use encode::check_len;
use lanes::L;
use threads::Runner;

/// The codec for one set of parameters, with its rotation precomputed. Cheap to build; reuse
/// it across calls with the same parameters.
#[derive(Debug, Clone)]
pub struct Codec {
    params: CodecParams,
    rotation: Rotation,
    candidates: usize,
}

impl Codec {
    /// The codec for validated parameters, encoding with [`default_candidates`] clipping
    /// candidates.
    pub fn new(params: CodecParams) -> Self {
        Self {
            rotation: Rotation::new(params.head_dim(), params.seed()),
            candidates: default_candidates(params.bits()),
            params,
        }
    }

    /// The same codec, with an encoder that tries the first `candidates` clipping factors of
    /// `docs/codec.md` §6 step 4 (`1..=3`; [`default_candidates`] unless set) and keeps the
    /// best.
    ///
    /// This is an encoder setting, not a format parameter: every code decodes the same way and
    /// decoding ignores it. Three candidates give a higher SQNR (iid Gaussian, head_dim 128:
    /// 10.09 / 15.79 / 21.49 dB at 2 / 3 / 4 bits instead of 10.03 / 15.64 / 21.05 dB with one)
    /// and encode about 2.4 times slower. Since the three candidates include the first, each
    /// vector's error with three is at most its error with one.
    ///
    /// # Errors
    /// [`CodecError::Candidates`] outside `1..=3`.
    pub fn with_candidates(mut self, candidates: i64) -> Result<Self, CodecError> {
        if !(1..=MAX_CANDIDATES as i64).contains(&candidates) {
            return Err(CodecError::Candidates { got: candidates });
        }
        self.candidates = candidates as usize;
        Ok(self)
    }

    /// How many clipping candidates the encoder tries (see [`Codec::with_candidates`]).
    pub fn candidates(&self) -> usize {
        self.candidates
    }

    /// The parameters.
    pub fn params(&self) -> &CodecParams {
        &self.params
    }

    /// The rotation `R`.
    pub fn rotation(&self) -> &Rotation {
        &self.rotation
    }

    /// Encodes `N = x.len() / d` head-vectors stored row after row in `x` into `codes_out`
    /// (`N·d·b/8` bytes, row after row) and `scales_out` (`N` fp16 bit patterns).
    ///
    /// Results are bit-identical to [`encode_vector`] on each row (after widening to binary32),
    /// whatever the thread count. A row with a NaN or infinite value gets scale
    /// [`NAN_SCALE`] and zero codes; other rows are unaffected.
    ///
    /// # Errors
    /// [`CodecError::PartialVector`] when `x.len()` is not a multiple of `d`,
    /// [`CodecError::Length`] when an output has the wrong length, [`CodecError::Threads`] or
    /// [`CodecError::ThreadPool`] for the thread choice.
    pub fn encode_into<T: Element>(
        &self,
        x: &[T],
        codes_out: &mut [u8],
        scales_out: &mut [u16],
        threads: Threads,
    ) -> Result<(), CodecError> {
        self.encode_groups_into(vec![(x, codes_out, scales_out)], threads)
    }

    /// Decodes `N = out.len() / d` head-vectors from `codes` (`N·d·b/8` bytes) and `scales`
    /// (`N` fp16 bit patterns) into `out`, row after row, rounding to `T` (nearest even).
    ///
    /// Bit-identical to [`decode_vector`] on each row followed by the rounding to `T`. A NaN
    /// scale gives a row of `T::NAN`.
    ///
    /// # Errors
    /// [`CodecError::PartialVector`] when `out.len()` is not a multiple of `d`,
    /// [`CodecError::Length`] when an input has the wrong length, [`CodecError::Threads`] or
    /// [`CodecError::ThreadPool`] for the thread choice.
    pub fn decode_into<T: Element>(
        &self,
        codes: &[u8],
        scales: &[u16],
        out: &mut [T],
        threads: Threads,
    ) -> Result<(), CodecError> {
        self.decode_groups_into(vec![(codes, scales, out)], threads)
    }

    /// Encodes several independent groups of rows at once: each `(x, codes_out, scales_out)` is
    /// what [`Codec::encode_into`] takes. The groups share one pass over the thread pool (see
    /// [`Codec::decode_groups_into`]).
    ///
    /// Bit-identical to [`Codec::encode_into`] on each group.
    ///
    /// # Errors
    /// As [`Codec::encode_into`], for the first group whose lengths disagree (nothing is
    /// written then).
    pub fn encode_groups_into<T: Element>(
        &self,
        groups: Vec<(&[T], &mut [u8], &mut [u16])>,
        threads: Threads,
    ) -> Result<(), CodecError> {
        let (d, cb) = (self.params.head_dim(), self.params.code_bytes());
        let mut total = 0;
        for (x, codes_out, scales_out) in &groups {
            let n = rows("x", x.len(), d)?;
            check_len(
                "codes_out",
                "N × head_dim·bits/8 bytes",
                n * cb,
                codes_out.len(),
            )?;
            check_len(
                "scales_out",
                "N, one fp16 scale per head-vector",
                n,
                scales_out.len(),
            )?;
            total += n;
        }
        let runner = Runner::new(threads)?;
        if runner.is_inline() || total <= L {
            for (x, codes_out, scales_out) in groups {
                kernel::encode_rows(self, x, codes_out, scales_out);
            }
            return Ok(());
        }
        let chunk = chunk_rows(total, runner.threads());
        let mut tasks = Vec::new();
        for (x, codes_out, scales_out) in groups {
            tasks.extend(
                x.chunks(chunk * d)
                    .zip(codes_out.chunks_mut(chunk * cb))
                    .zip(scales_out.chunks_mut(chunk)),
            );
        }
        runner.install(|| {
            tasks
                .into_par_iter()
                .for_each(|((x, c), sc)| kernel::encode_rows(self, x, c, sc));
        });
        Ok(())
    }

    /// Decodes several independent groups of rows at once: each `(codes, scales, out)` is what
    /// [`Codec::decode_into`] takes. The groups share one pass over the thread pool, so a
    /// caller whose rows are split across buffers (the heads of a KV cache, each decoded into
    /// its own slice of an attention buffer) pays one dispatch, not one per group.
    ///
    /// Bit-identical to [`Codec::decode_into`] on each group.
    ///
    /// # Errors
    /// As [`Codec::decode_into`], for the first group whose lengths disagree (nothing is
    /// written then).
    pub fn decode_groups_into<T: Element>(
        &self,
        groups: Vec<(&[u8], &[u16], &mut [T])>,
        threads: Threads,
    ) -> Result<(), CodecError> {
        self.decode_groups_with(groups, None, threads)
    }

    /// [`Codec::decode_groups_into`] for rows coded relative to a centre: a row whose scale has
    /// its sign bit set (which the encoder never sets) decodes with `|scale|` and then gets its
    /// group's centre `centres[group·d ..][.. d]` added (binary32, before the rounding to `T`);
    /// other rows decode exactly as [`Codec::decode_groups_into`] decodes them. This is how a KV
    /// cache stores keys minus a per-head centre where that makes them shorter, at no cost in
    /// bits (`nexusquant.cache.layer`).
    ///
    /// # Errors
    /// As [`Codec::decode_groups_into`]; [`CodecError::Length`] when `centres` does not hold
    /// `d` values per group.
    pub fn decode_groups_centred_into<T: Element>(
        &self,
        groups: Vec<(&[u8], &[u16], &mut [T])>,
        centres: &[f32],
        threads: Threads,
    ) -> Result<(), CodecError> {
        let d = self.params.head_dim();
        check_len(
            "centres",
            "G × head_dim, one centre per group",
            groups.len() * d,
            centres.len(),
        )?;
        self.decode_groups_with(groups, Some(centres), threads)
    }

    fn decode_groups_with<T: Element>(
        &self,
        groups: Vec<(&[u8], &[u16], &mut [T])>,
        centres: Option<&[f32]>,
        threads: Threads,
    ) -> Result<(), CodecError> {
        let (d, cb) = (self.params.head_dim(), self.params.code_bytes());
        let mut total = 0;
        for (codes, scales, out) in &groups {
            let n = rows("out", out.len(), d)?;
            check_len("codes", "N × head_dim·bits/8 bytes", n * cb, codes.len())?;
            check_len(
                "scales",
                "N, one fp16 scale per head-vector",
                n,
                scales.len(),
            )?;
            total += n;
        }
        let centre = |i: usize| centres.map(|c| &c[i * d..(i + 1) * d]);
        let runner = Runner::new(threads)?;
        if runner.is_inline() || total <= L {
            for (i, (codes, scales, out)) in groups.into_iter().enumerate() {
                kernel::decode_rows(self, codes, scales, out, centre(i));
            }
            return Ok(());
        }
        let chunk = chunk_rows(total, runner.threads());
        let mut tasks = Vec::new();
        for (i, (codes, scales, out)) in groups.into_iter().enumerate() {
            let c = centre(i);
            tasks.extend(
                codes
                    .chunks(chunk * cb)
                    .zip(scales.chunks(chunk))
                    .zip(out.chunks_mut(chunk * d))
                    .map(move |((k, s), o)| (k, s, o, c)),
            );
        }
        runner.install(|| {
            tasks
                .into_par_iter()
                .for_each(|(k, s, o, c)| kernel::decode_rows(self, k, s, o, c));
        });
        Ok(())
    }

    /// Attention scores of coded keys without decoding them ([`attend`]): for each group
    /// `(codes, scales, out)` of `n = scales.len()` coded head-vectors `x̂_t` and its `g` queries
    /// `queries[group·g·d ..][.. g·d]` (`g × d`, row after row), writes
    /// `out[t·g + j] = <q_j, x̂_t>` (token-major, `n·g` values).
    ///
    /// Equal to decoding the head-vectors and taking the dot products, up to binary32 rounding
    /// (one rotation per query instead of one per token). A NaN scale gives NaN scores.
    ///
    /// # Errors
    /// [`CodecError::PartialVector`] when `queries.len()` is not a multiple of `d`,
    /// [`CodecError::Length`] when `queries` does not hold `g` queries per group or a group's
    /// lengths disagree (nothing is written then), [`CodecError::Threads`] or
    /// [`CodecError::ThreadPool`] for the thread choice.
    pub fn attention_scores_into(
        &self,
        queries: &[f32],
        groups: Vec<(&[u8], &[u16], &mut [f32])>,
        threads: Threads,
    ) -> Result<(), CodecError> {
        let (rq, g) = self.rotated_queries(queries, groups.len())?;
        let (d, cb) = (self.params.head_dim(), self.params.code_bytes());
        let lens = groups.iter().map(|(c, s, o)| (s.len(), c.len(), o.len()));
        let (runner, inline, chunk) = self.attention_split(lens, "out", g, threads)?;
        let mut tasks = Vec::new();
        for (i, (codes, scales, out)) in groups.into_iter().enumerate() {
            let q = &rq[i * g * d..(i + 1) * g * d];
            tasks.extend(
                codes
                    .chunks(chunk * cb)
                    .zip(scales.chunks(chunk))
                    .zip(out.chunks_mut(chunk * g))
                    .map(move |((c, s), o)| (q, c, s, o)),
            );
        }
        let task = |(q, c, s, o): (&[f32], &[u8], &[u16], &mut [f32])| {
            kernel::scores_rows(self, q, c, s, o);
        };
        if inline {
            tasks.into_iter().for_each(task);
        } else {
            runner.install(|| tasks.into_par_iter().for_each(task));
        }
        Ok(())
    }

    /// Weighted sums of coded values without decoding them ([`attend`]): for each group
    /// `(codes, scales, weights)` of `n = scales.len()` coded head-vectors `x̂_t` and its
    /// token-major weights (`weights[t·g + j]`, `n·g` values), writes
    /// `out[group·g·d + j·d + i] = Σ_t weights[t·g + j] · x̂_t[i]` (`g × d` per group).
    ///
    /// Equal to decoding the head-vectors and summing, up to binary32 rounding (one inverse
    /// rotation per query instead of one per token). The partial sums of the tasks a group is
    /// split into are added in a fixed order, so the result does not depend on scheduling for
    /// a given thread count. A NaN scale poisons the sums it takes part in (even with weight 0,
    /// as a decoded NaN row would).
    ///
    /// # Errors
    /// [`CodecError::PartialVector`] when `out.len()` is not a multiple of `d`,
    /// [`CodecError::Length`] when `out` does not hold `g` sums per group or a group's lengths
    /// disagree (nothing is written then), [`CodecError::Threads`] or
    /// [`CodecError::ThreadPool`] for the thread choice.
    pub fn attention_values_into(
        &self,
        groups: Vec<(&[u8], &[u16], &[f32])>,
        out: &mut [f32],
        threads: Threads,
    ) -> Result<(), CodecError> {
        let (d, cb) = (self.params.head_dim(), self.params.code_bytes());
        let g = per_group("out", out.len(), d, groups.len())?;
        let lens = groups.iter().map(|(c, s, w)| (s.len(), c.len(), w.len()));
        let (runner, inline, chunk) = self.attention_split(lens, "weights", g, threads)?;
        // One task per chunk of a group, each with its own partial sums (group index kept).
        let mut tasks = Vec::new();
        for (i, (codes, scales, weights)) in groups.iter().enumerate() {
            tasks.extend(
                codes
                    .chunks(chunk * cb)
                    .zip(scales.chunks(chunk))
                    .zip(weights.chunks(chunk * g))
                    .map(move |((c, s), w)| (i, c, s, w)),
            );
        }
        let task = |(i, c, s, w): (usize, &[u8], &[u16], &[f32])| {
            let mut part = vec![0f32; g * d];
            kernel::values_rows(self, w, c, s, &mut part);
            (i, part)
        };
        let partials: Vec<(usize, Vec<f32>)> = if inline {
            tasks.into_iter().map(task).collect()
        } else {
            runner.install(|| tasks.into_par_iter().map(task).collect())
        };
        out.fill(0.0);
        for (i, part) in partials {
            for (o, p) in out[i * g * d..(i + 1) * g * d].iter_mut().zip(&part) {
                *o += *p;
            }
        }
        for v in out.chunks_exact_mut(d) {
            self.rotation.inverse(v);
        }
        Ok(())
    }

    /// Checks the lengths `(n, codes, per-token buffer)` of each attention group (the buffer
    /// named `name` holds `g` values per token) and picks how to run them: the runner, whether
    /// inline, and the tokens per task.
    fn attention_split(
        &self,
        lens: impl Iterator<Item = (usize, usize, usize)>,
        name: &'static str,
        g: usize,
        threads: Threads,
    ) -> Result<(Runner, bool, usize), CodecError> {
        let cb = self.params.code_bytes();
        let mut total = 0;
        for (n, codes, other) in lens {
            check_len("codes", "N × head_dim·bits/8 bytes", n * cb, codes)?;
            check_len(name, "N × g, token-major", n * g, other)?;
            total += n;
        }
        let runner = Runner::new(threads)?;
        let inline = runner.is_inline() || total <= L;
        let chunk = if inline {
            usize::MAX / cb.max(g).max(1)
        } else {
            chunk_rows(total, runner.threads())
        };
        Ok((runner, inline, chunk))
    }

    /// `R q` of every query, and the number of queries per group.
    fn rotated_queries(
        &self,
        queries: &[f32],
        groups: usize,
    ) -> Result<(Vec<f32>, usize), CodecError> {
        let d = self.params.head_dim();
        let g = per_group("queries", queries.len(), d, groups)?;
        let mut rq = queries.to_vec();
        for v in rq.chunks_exact_mut(d) {
            self.rotation.forward(v);
        }
        Ok((rq, g))
    }

    /// The scalar baseline ([`scalar`]): encodes and decodes the rows of `x` into `out`.
    ///
    /// # Errors
    /// [`CodecError::PartialVector`] when `x.len()` is not a multiple of `d`,
    /// [`CodecError::Length`] when `out.len() != x.len()`, [`CodecError::Threads`] or
    /// [`CodecError::ThreadPool`] for the thread choice.
    pub fn scalar_roundtrip(
        &self,
        x: &[f32],
        out: &mut [f32],
        threads: Threads,
    ) -> Result<(), CodecError> {
        let d = self.params.head_dim();
        let n = rows("x", x.len(), d)?;
        check_len("out", "N × head_dim, the shape of x", x.len(), out.len())?;
        let runner = Runner::new(threads)?;
        if runner.is_inline() || n <= L {
            kernel::scalar_rows(self, x, out);
            return Ok(());
        }
        let chunk = chunk_rows(n, runner.threads());
        runner.install(|| {
            x.par_chunks(chunk * d)
                .zip(out.par_chunks_mut(chunk * d))
                .for_each(|(x, o)| kernel::scalar_rows(self, x, o));
        });
        Ok(())
    }
}

/// The number of head-vectors in a flat buffer of `len` values.
fn rows(name: &'static str, len: usize, d: usize) -> Result<usize, CodecError> {
    if len % d == 0 {
        Ok(len / d)
    } else {
        Err(CodecError::PartialVector {
            name,
            head_dim: d,
            got: len,
        })
    }
}

/// Vectors per group of a buffer of `len` values shared evenly by `groups` groups (0 when
/// there are no groups and the buffer is empty).
fn per_group(name: &'static str, len: usize, d: usize, groups: usize) -> Result<usize, CodecError> {
    let n = rows(name, len, d)?;
    if groups == 0 {
        check_len(name, "g × head_dim values per group", 0, len)?;
        return Ok(0);
    }
    check_len(
        name,
        "g × head_dim values per group",
        n / groups * groups * d,
        len,
    )?;
    Ok(n / groups)
}

/// Rows per parallel task: about four tasks per thread, a multiple of the lane count, at most
/// 1024 rows.
fn chunk_rows(n: usize, threads: usize) -> usize {
    n.div_ceil(4 * threads).next_multiple_of(L).clamp(L, 1024)
}

/// Encodes the rows of `x` (see [`Codec::encode_into`]).
///
/// # Errors
/// As [`Codec::encode_into`].
pub fn encode_into<T: Element>(
    params: &CodecParams,
    x: &[T],
    codes_out: &mut [u8],
    scales_out: &mut [u16],
    threads: Threads,
) -> Result<(), CodecError> {
    Codec::new(*params).encode_into(x, codes_out, scales_out, threads)
}

/// Decodes rows into `out` (see [`Codec::decode_into`]).
///
/// # Errors
/// As [`Codec::decode_into`].
pub fn decode_into<T: Element>(
    params: &CodecParams,
    codes: &[u8],
    scales: &[u16],
    out: &mut [T],
    threads: Threads,
) -> Result<(), CodecError> {
    Codec::new(*params).decode_into(codes, scales, out, threads)
}

/// The scalar baseline's encode + decode of the rows of `x` (see [`Codec::scalar_roundtrip`]).
///
/// # Errors
/// As [`Codec::scalar_roundtrip`].
pub fn scalar_roundtrip(
    params: &CodecParams,
    x: &[f32],
    out: &mut [f32],
    threads: Threads,
) -> Result<(), CodecError> {
    Codec::new(*params).scalar_roundtrip(x, out, threads)
}
