"""The pyfuse3 Operations over the engine services, inodes, and the daemon."""
