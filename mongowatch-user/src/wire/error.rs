//! Why a frame did not decode. Every variant maps to one [`DecodeErrorKind`], which is what the
//! stats count (the variant's fields are for the diagnostic log).

use thiserror::Error;

use super::types::Compressor;

/// A framed message that could not be decoded. Never a panic: every malformed input ends here.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// messageLength below the header plus the opcode's minimum body, above 48,000,000, or not
    /// the frame's length.
    #[error("message length {length} out of range for a {frame_len}-byte frame")]
    BadLength { length: i64, frame_len: usize },
    #[error("unknown opcode {0}")]
    UnknownOpCode(i32),
    /// The message ended inside a field.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// Bytes left over after the last field of a fixed-layout message.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
    #[error("OP_MSG: unknown required flag bits {0:#06x}")]
    UnknownRequiredFlags(u32),
    #[error("OP_MSG: checksum {wire:#010x} on the wire, {computed:#010x} computed")]
    ChecksumMismatch { wire: u32, computed: u32 },
    #[error("OP_MSG: no kind 0 section")]
    MissingBody,
    #[error("OP_MSG: more than one kind 0 section")]
    DuplicateBody,
    #[error("OP_MSG: unknown section kind {0}")]
    UnknownSectionKind(u8),
    /// A kind 1 section whose size disagrees with its content.
    #[error("OP_MSG: bad document sequence: {0}")]
    BadSequence(&'static str),
    /// A C string without its NUL, or not UTF-8.
    #[error("bad C string in {0}")]
    BadCString(&'static str),
    /// A length prefix that is negative, too small or runs past its container, or a document
    /// without its trailing NUL.
    #[error("bad BSON document in {what}: {detail}")]
    BadBson { what: &'static str, detail: String },
    /// A count field that disagrees with what follows (OP_REPLY numberReturned, OP_KILL_CURSORS).
    #[error("{what}: count {declared} but {actual} present")]
    CountMismatch {
        what: &'static str,
        declared: i64,
        actual: usize,
    },
    #[error("OP_COMPRESSED: unknown compressor id {0}")]
    UnknownCompressor(u8),
    #[error("OP_COMPRESSED: original opcode {0} cannot be compressed")]
    BadOriginalOpCode(i32),
    #[error("OP_COMPRESSED: uncompressedSize {0} out of range")]
    BadUncompressedSize(i64),
    /// The compressed data inflates to a size other than the declared one (a bomb stops at the
    /// declared size plus one byte).
    #[error("OP_COMPRESSED: {compressor:?} body declared {declared} bytes, inflates to {actual}")]
    SizeMismatch {
        compressor: Compressor,
        declared: usize,
        /// At most `declared + 1`: decompression stops there.
        actual: usize,
    },
    #[error("OP_COMPRESSED: {compressor:?} data corrupt: {detail}")]
    Decompress {
        compressor: Compressor,
        detail: String,
    },
}

/// The counted category of a [`DecodeError`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum DecodeErrorKind {
    BadLength,
    UnknownOpCode,
    Truncated,
    TrailingBytes,
    UnknownRequiredFlags,
    ChecksumMismatch,
    MissingBody,
    DuplicateBody,
    UnknownSectionKind,
    BadSequence,
    BadCString,
    BadBson,
    CountMismatch,
    UnknownCompressor,
    BadOriginalOpCode,
    BadUncompressedSize,
    SizeMismatch,
    Decompress,
}

impl DecodeError {
    pub fn kind(&self) -> DecodeErrorKind {
        use DecodeErrorKind as K;
        match self {
            Self::BadLength { .. } => K::BadLength,
            Self::UnknownOpCode(_) => K::UnknownOpCode,
            Self::Truncated(_) => K::Truncated,
            Self::TrailingBytes(_) => K::TrailingBytes,
            Self::UnknownRequiredFlags(_) => K::UnknownRequiredFlags,
            Self::ChecksumMismatch { .. } => K::ChecksumMismatch,
            Self::MissingBody => K::MissingBody,
            Self::DuplicateBody => K::DuplicateBody,
            Self::UnknownSectionKind(_) => K::UnknownSectionKind,
            Self::BadSequence(_) => K::BadSequence,
            Self::BadCString(_) => K::BadCString,
            Self::BadBson { .. } => K::BadBson,
            Self::CountMismatch { .. } => K::CountMismatch,
            Self::UnknownCompressor(_) => K::UnknownCompressor,
            Self::BadOriginalOpCode(_) => K::BadOriginalOpCode,
            Self::BadUncompressedSize(_) => K::BadUncompressedSize,
            Self::SizeMismatch { .. } => K::SizeMismatch,
            Self::Decompress { .. } => K::Decompress,
        }
    }
}
