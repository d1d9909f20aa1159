"""Image providers: one module per vendor, all behind the `Provider` protocol in `base`."""
