//! OP_COMPRESSED bodies: snappy, zlib and zstd, bounded by the declared uncompressedSize.
//!
//! Bomb safety: output never grows past `declared + 1` bytes (the extra byte only proves a
//! mismatch), and the buffer is sized from what the input can possibly inflate to, so a tiny
//! frame that declares 48 MB costs neither 48 MB nor the time to inflate it.

use std::{cell::RefCell, io::Read};

use super::{error::DecodeError, frame::MAX_MESSAGE_SIZE, types::Compressor};

/// Snappy's best ratio is a 3-byte copy op emitting 64 bytes (about 21:1).
const SNAPPY_MAX_RATIO: usize = 32;
/// Deflate's best ratio is about 1032:1.
const ZLIB_MAX_RATIO: usize = 1100;

thread_local! {
    static ZLIB: RefCell<flate2::Decompress> = RefCell::new(flate2::Decompress::new(true));
    static ZSTD: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// Inflates `input` compressed with `compressor` to exactly `declared` bytes.
pub fn decompress(
    compressor: Compressor,
    input: &[u8],
    declared: usize,
) -> Result<Vec<u8>, DecodeError> {
    if declared > MAX_MESSAGE_SIZE {
        return Err(DecodeError::BadUncompressedSize(declared as i64));
    }
    let mismatch = |actual| DecodeError::SizeMismatch {
        compressor,
        declared,
        actual,
    };
    let corrupt = |detail: String| DecodeError::Decompress { compressor, detail };
    match compressor {
        Compressor::Noop => {
            if input.len() != declared {
                return Err(mismatch(input.len()));
            }
            Ok(input.to_vec())
        }
        Compressor::Snappy => {
            // The snappy preamble states the output length: check it before allocating.
            let len = snap::raw::decompress_len(input).map_err(|e| corrupt(e.to_string()))?;
            if len != declared {
                return Err(mismatch(len.min(declared.saturating_add(1))));
            }
            if declared
                > input
                    .len()
                    .saturating_mul(SNAPPY_MAX_RATIO)
                    .saturating_add(16)
            {
                return Err(corrupt(
                    "length beyond what the input can inflate to".into(),
                ));
            }
            let mut out = vec![0u8; declared];
            let n = snap::raw::Decoder::new()
                .decompress(input, &mut out)
                .map_err(|e| corrupt(e.to_string()))?;
            if n != declared {
                return Err(mismatch(n));
            }
            Ok(out)
        }
        Compressor::Zlib => {
            if declared
                > input
                    .len()
                    .saturating_mul(ZLIB_MAX_RATIO)
                    .saturating_add(64)
            {
                return Err(corrupt("size beyond what the input can inflate to".into()));
            }
            // One byte of room past the declared size: filling it proves a mismatch, and
            // inflation cannot go further.
            let mut out = Vec::with_capacity(declared + 1);
            let status = ZLIB.with(|cell| {
                let mut d = cell.borrow_mut();
                d.reset(true);
                d.decompress_vec(input, &mut out, flate2::FlushDecompress::Finish)
            });
            match status {
                Ok(_) if out.len() > declared => Err(mismatch(out.len())),
                Ok(flate2::Status::StreamEnd) if out.len() == declared => Ok(out),
                Ok(flate2::Status::StreamEnd) => Err(mismatch(out.len())),
                Ok(_) => Err(corrupt("truncated zlib stream".into())),
                Err(e) => Err(corrupt(e.to_string())),
            }
        }
        Compressor::Zstd => zstd_inflate(input, declared),
    }
}

fn zstd_inflate(input: &[u8], declared: usize) -> Result<Vec<u8>, DecodeError> {
    let compressor = Compressor::Zstd;
    let corrupt = |detail: String| DecodeError::Decompress { compressor, detail };
    let mismatch = |actual| DecodeError::SizeMismatch {
        compressor,
        declared,
        actual,
    };
    match zstd::zstd_safe::get_frame_content_size(input) {
        Err(_) => Err(corrupt("bad frame header".into())),
        // The frame states its size (drivers and servers use one-shot compression): check it,
        // then inflate into a buffer of exactly that size; zstd stops at its end.
        Ok(Some(size)) => {
            if size != declared as u64 {
                return Err(mismatch(
                    usize::try_from(size).map_or(declared + 1, |s| s.min(declared + 1)),
                ));
            }
            let mut out = Vec::with_capacity(declared);
            ZSTD.with(|cell| {
                let mut slot = cell.borrow_mut();
                if slot.is_none() {
                    *slot =
                        Some(zstd::bulk::Decompressor::new().map_err(|e| corrupt(e.to_string()))?);
                }
                let Some(d) = slot.as_mut() else {
                    return Err(corrupt("no decompressor".into()));
                };
                d.decompress_to_buffer(input, &mut out)
                    .map_err(|e| corrupt(e.to_string()))
            })?;
            if out.len() != declared {
                return Err(mismatch(out.len()));
            }
            Ok(out)
        }
        // Streaming frame without a size: inflate step by step, capped.
        Ok(None) => {
            let mut out = Vec::with_capacity(declared.min(1 << 20));
            zstd::stream::read::Decoder::with_buffer(input)
                .map_err(|e| corrupt(e.to_string()))?
                .take(declared as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| corrupt(e.to_string()))?;
            if out.len() != declared {
                return Err(mismatch(out.len()));
            }
            Ok(out)
        }
    }
}
