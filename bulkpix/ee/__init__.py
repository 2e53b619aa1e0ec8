"""Talking to the Earth Engine REST API: auth, the HTTP client, payload decoding."""
