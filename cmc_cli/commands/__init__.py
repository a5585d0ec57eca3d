"""One thin module per subcommand: parse options -> config -> one library call -> report."""
