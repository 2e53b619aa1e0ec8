"""The clients under test. Each peer is a small script run in its own process
(``python -m benchmarks.clients.NAME``); bulkpix is driven through its CLI."""
