"""The simulated KV cache: device blocks with vLLM's prefix caching, and an optional host store.

Device blocks (vLLM v1 ``BlockPool`` / ``KVCacheManager``, ``vllm/v1/core``):

* a request holds ``ceil(tokens / block_size)`` blocks; its *full* blocks carry a hash, so when
  they are freed (the request finished or was parked) they stay in the free queue as a cache;
* the free queue is LRU: allocation takes from its head, evicting what it takes; a request's
  blocks are freed tail first (vLLM frees in reverse order), so its prefix outlives its tail;
* a parked request that is readmitted gets back the leading run of its blocks still in the queue
  (a prefix-cache hit) and recomputes only the rest.

The host store models vLLM's KV offloading (``--kv-offloading-backend native``, the
``OffloadingConnector``; GPU builds): every full block is copied to host memory as it fills, in
the background, so a park costs no device time, and a readmission loads what the host holds at
the host link's bandwidth instead of recomputing it. Host space is bounded (``host_blocks``) and
LRU by request.

Counts only, no data: which request's blocks are cached, and how many.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["KVCache"]


class KVCache:
    """Device blocks with prefix caching, and an optional host store (module docstring).

    Free blocks are of two kinds: anonymous (never filled, or a partial block) and cached (a
    full block of some request, kept in LRU order). Allocation takes anonymous blocks first, then
    evicts cached ones, least recently freed first.
    """

    def __init__(self, blocks: int, block_size: int, host_blocks: int = 0) -> None:
        if blocks < 1 or block_size < 1 or host_blocks < 0:
            raise ValueError(
                f"bad KV cache: {blocks} blocks of {block_size} tokens, {host_blocks} on the host"
            )
        self.blocks = blocks
        self.block_size = block_size
        self.host_blocks = host_blocks
        self.used = 0  # blocks allocated to requests
        self._cached: OrderedDict[tuple[str, int], None] = OrderedDict()  # LRU first
        self._prefix: dict[str, int] = {}  # parked req_id -> leading cached blocks still intact
        self._host: OrderedDict[str, int] = OrderedDict()  # req_id -> full blocks on the host
        self._host_used = 0
        self.queried_tokens = 0  # tokens readmissions needed
        self.hit_tokens = 0  # of which the prefix cache gave back
        self.loaded_tokens = 0  # of which the host store gave back

    @property
    def free(self) -> int:
        """Blocks that can be allocated now (cached free blocks included: they are evicted)."""
        return self.blocks - self.used

    def allocate(self, count: int) -> None:
        """Take ``count`` free blocks: anonymous ones first, then the least recently cached."""
        if count > self.free:
            raise ValueError(f"cannot allocate {count} blocks with {self.free} free")
        anonymous = self.free - len(self._cached)
        self.used += count
        for _ in range(count - min(count, anonymous)):
            (req_id, index), _ = self._cached.popitem(last=False)
            prefix = self._prefix.get(req_id)
            if prefix is not None and index < prefix:
                self._prefix[req_id] = index

    def release(self, req_id: str, held_blocks: int, tokens: int, *, parked: bool) -> None:
        """``req_id`` frees the ``held_blocks`` holding its ``tokens``; its full blocks stay cached,
        tail first into the queue so its prefix is the last to go. ``parked``: it may come back
        (its prefix is tracked); otherwise it finished and only the eviction order remembers it."""
        self.used -= held_blocks
        full = min(tokens // self.block_size, held_blocks)
        for index in reversed(range(full)):
            self._cached[(req_id, index)] = None
        if parked:
            self._prefix[req_id] = full
        else:
            self.drop_host(req_id)

    def store_host(self, req_id: str, tokens: int) -> None:
        """Keep ``req_id``'s full blocks on the host (offload), evicting the least recent."""
        if not self.host_blocks:
            return
        full = min(tokens // self.block_size, self.host_blocks)
        self.drop_host(req_id)
        while self._host and self._host_used + full > self.host_blocks:
            _, blocks = self._host.popitem(last=False)
            self._host_used -= blocks
        self._host[req_id] = full
        self._host_used += full

    def drop_host(self, req_id: str) -> None:
        self._host_used -= self._host.pop(req_id, 0)

    def cached_tokens(self, req_id: str, tokens: int) -> tuple[int, int]:
        """(tokens the prefix cache, tokens the host) would give back to a readmission of
        ``req_id`` needing ``tokens`` now; at least its last token is always computed."""
        bs = self.block_size
        limit = max(tokens - 1, 0) // bs
        prefix = min(self._prefix.get(req_id, 0), limit) * bs
        host = min(self._host.get(req_id, 0), limit) * bs
        return prefix, max(host - prefix, 0)

    def readmit(self, req_id: str, tokens: int, blocks: int) -> tuple[int, int]:
        """Readmit ``req_id`` with ``blocks`` blocks for ``tokens``; returns (tokens back from the
        prefix cache, tokens loaded from the host). Its cached prefix is reused, not evicted."""
        hit, loaded = self.cached_tokens(req_id, tokens)
        full = self._prefix.pop(req_id, 0)
        for index in range(full):  # its cached blocks leave the LRU: reused, or now anonymous
            self._cached.pop((req_id, index), None)
        self.allocate(blocks)
        self.queried_tokens += tokens
        self.hit_tokens += hit
        self.loaded_tokens += loaded
        return hit, loaded
