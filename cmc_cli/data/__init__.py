"""Training and evaluation data: instruction (Alpaca, chat messages) and TOFU formats, collation."""
