"""Uploaded inputs: decoding and checking images, storing them, ``POST /v1/uploads``."""
