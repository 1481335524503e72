"""Third-party code layra ships unchanged (see each folder's README.md and LICENSE)."""
