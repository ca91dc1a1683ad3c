"""Exception types raised by nexusquant.

Every error names the argument at fault and what is allowed, e.g.
``BitsError: key_bits must be one of [2, 3, 4] (1-8 accepted), got 9``.
The Rust core's errors are mapped onto these classes in one place
(``rust/nexusquant-py/src/errors.rs``), so Python code can catch them by type.
"""

from __future__ import annotations


class NexusQuantError(Exception):
    """Base class of every error raised by nexusquant."""


class InvalidArgumentError(NexusQuantError, ValueError):
    """An argument has a value outside what is allowed."""


class UnsupportedDtypeError(InvalidArgumentError, TypeError):
    """A tensor has a dtype the codec does not accept (float16, bfloat16, float32 are)."""


class HeadDimError(InvalidArgumentError):
    """head_dim is not a multiple of 8 in [8, 1024]."""


class BitsError(InvalidArgumentError):
    """A bit width outside the supported set."""


class ShapeError(InvalidArgumentError):
    """Tensor shapes do not agree with each other or with the codec parameters."""


class DeviceError(NexusQuantError, RuntimeError):
    """A tensor is on a device this operation cannot use."""


class GPUUnavailableError(DeviceError):
    """The CUDA path was asked for but CuPy, a device or NVRTC is missing."""


class FormatError(NexusQuantError, ValueError):
    """A .nqkv file or buffer is malformed. Raised for every hostile or corrupt input."""


class BadMagicError(FormatError):
    """The data does not start with the .nqkv magic bytes."""


class UnsupportedVersionError(FormatError):
    """The file's major format version is not one this build reads."""


class TruncatedError(FormatError):
    """The data ends before a section it declares."""


class ChecksumError(FormatError):
    """A section's checksum does not match its bytes."""


class LayoutError(FormatError):
    """Declared sizes, offsets or counts are inconsistent, overflow, or exceed limits."""


class StoreError(NexusQuantError, RuntimeError):
    """A host or disk store operation failed (I/O, budget, closed store)."""


__all__ = [
    "NexusQuantError",
    "InvalidArgumentError",
    "UnsupportedDtypeError",
    "HeadDimError",
    "BitsError",
    "ShapeError",
    "DeviceError",
    "GPUUnavailableError",
    "FormatError",
    "BadMagicError",
    "UnsupportedVersionError",
    "TruncatedError",
    "ChecksumError",
    "LayoutError",
    "StoreError",
]
