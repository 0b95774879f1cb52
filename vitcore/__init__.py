"""vitcore: fast zero-cost proxies for Vision Transformer architecture search."""
