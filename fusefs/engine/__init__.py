"""The node's services (commit, claims, sync, fleet, digest, fsck), without FUSE."""
