"""One module per ``rvqcodec`` subcommand, each exposing ``add_arguments(parser)`` and ``run(args) -> int``."""
