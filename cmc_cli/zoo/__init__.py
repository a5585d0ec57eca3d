"""The built-in tiny model world: tokenizers and models made offline, for `cmc demo` and the tests."""
