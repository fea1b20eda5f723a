"""One module per ``rvqcodec`` subcommand, each exposing ``add_arguments(parser)`` and ``run(args) -> int``
(:mod:`rvqcodec.cli` dispatches to them), plus :mod:`.common`, what the codec commands share."""
