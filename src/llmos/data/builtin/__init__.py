"""The built-in sets, made on the spot from the running Python with nothing to download:
``builtin:assistant`` (assistant.py, with arithmetic.py, python_questions.py and the standard
library's API in stdlib_api.py) and ``builtin:comparisons`` (comparisons.py). turns.py holds
what they share: the seed, the held-out split by subject and the message builders."""
