"""CLI subcommands: one module each, exposing ``register(subparsers)`` and, where an
older spelling is still accepted, ``legacy_argv(argv)`` (both called by layra.cli)."""
