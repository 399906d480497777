"""Privacy: erasure of a user everywhere the project writes, tombstones, audit, least-privilege roles, retention."""
