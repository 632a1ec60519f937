"""Object storage: the interface (``base``), local files (``local``), S3 (``s3``) and ``open_store``."""
