"""The nanoclaw command's nouns, one module each (as Postfix gives each admin tool its own file).

Each module holds one noun's parser setup and its command functions: add_parsers(sub) adds
its subcommands to the top-level subparsers, each with its handler as the "run" default,
and a handler is run(cfg, args) -> exit code. admin/cli.py assembles them and dispatches;
the work itself stays in the admin/ and core/ modules a handler calls.
"""
