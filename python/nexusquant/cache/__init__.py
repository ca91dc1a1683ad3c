"""transformers integration: :class:`NexusQuantCache`, a ``Cache`` holding packed KV codes.

Modules:

* :mod:`nexusquant.cache.layer` - one full-attention layer's storage (sinks, packed codes, window)
  and the CPU attention path; the extension points for token eviction are documented there;
* :mod:`nexusquant.cache.kvcache` - the ``Cache`` itself: layer kinds, padding, beam search,
  ``compress_kv_cache``;
* :mod:`nexusquant.cache.report` - :class:`MemoryReport`, the bytes really held.

Importing this package imports transformers (>= 5.17); ``import nexusquant`` does not.
"""

from __future__ import annotations

from .kvcache import NexusQuantCache, compress_kv_cache
from .layer import NexusQuantLayer, PackedLayerView
from .report import MemoryReport

__all__ = ["NexusQuantCache", "compress_kv_cache", "MemoryReport", "NexusQuantLayer", "PackedLayerView"]
