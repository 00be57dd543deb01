"""The frozen backbone: specs and weights, the cache key, the fine-tune cut, the extractor,
the caching job and its engines (this process, a Ray cluster)."""
