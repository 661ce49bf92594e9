"""System-2 strategies over a token-streaming decoder (serve/thinking.py, and `llmos chat
--think` on llama.cpp)."""

from __future__ import annotations

import threading
from dataclasses import replace

from llmos.infer.engine import STOP, SamplingParams, TextStream
from llmos.infer.sampling import Completion, cut


class StreamedModel:
    """A `LanguageModel` (infer/think.py) over a decoder with `stream` and `mean_logprobs`:
    the server's batching scheduler, where each row of a batch of completions is one request of
    the running batch on its own thread, or llama.cpp, which takes the rows in turn."""

    def __init__(self, decoder, tok, cancel: threading.Event | None = None):
        self.decoder, self.tok, self.cancel = decoder, tok, cancel

    def complete(self, prompts, params: SamplingParams, stops=(), keep_stop=False
                 ) -> list[Completion]:
        out: list[Completion | None] = [None] * len(prompts)
        errors: list[BaseException] = []

        def row(i: int) -> None:
            # Rows of one seeded request draw differently (seed + i), as n choices do.
            p = params if params.seed is None else replace(params, seed=params.seed + i)
            stream, text, ids, finish = TextStream(self.tok), "", [], "length"
            tokens = self.decoder.stream(list(prompts[i]), p, self.cancel)
            try:
                for t in tokens:
                    if t == STOP:
                        finish = "stop"
                        break
                    ids.append(t)
                    text += stream.push(t)
                    if stops and cut(text, stops)[1]:
                        finish = "stop"
                        break
            except BaseException as e:  # noqa: BLE001 - handed to the request's thread
                errors.append(e)
            finally:
                tokens.close()
            text, stop = cut(text, stops, keep_stop)
            out[i] = Completion(text, ids, finish, stop)

        threads = [threading.Thread(target=row, args=(i,), daemon=True)
                   for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return out

    def mean_logprobs(self, prompt, continuations) -> list[float]:
        return self.decoder.mean_logprobs(prompt, continuations)
