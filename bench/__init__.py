"""`make bench`: our server against the onnxruntime ceiling and the Gunicorn design it replaces (see README.md)."""
