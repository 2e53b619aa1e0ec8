"""Flow control: the concurrency/rate governor, retries, the worker pool."""
