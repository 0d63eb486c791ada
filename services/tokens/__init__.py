"""The tokens service: the one owner of every broker account's tokens (see ``services.tokens.main``)."""
