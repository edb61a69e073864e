"""The privnerf command line."""
