"""`llmos serve`: an OpenAI-compatible API and a web chat over continuously batched decoding."""
