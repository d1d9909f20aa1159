"""imagejobs: asynchronous image generation, edit and variation jobs over REST and gRPC."""

__version__ = "0.1.0"
