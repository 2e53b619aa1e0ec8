"""Reading a finished (or partial) output back: the item and its bands (``source``), a
Cloud-Optimized GeoTIFF (``export``), a quicklook PNG (``preview``).

Every reader goes chunk by chunk: memory stays at a few chunks whatever the image size.
"""
