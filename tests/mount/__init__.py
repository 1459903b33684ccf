"""Real FUSE mounts driven by real processes, and real S3 servers (moto, SeaweedFS) on 127.0.0.1."""
