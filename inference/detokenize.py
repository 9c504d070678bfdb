"""Turn a growing list of token ids into text deltas, never splitting a character."""
from __future__ import annotations

from inference.prompts import tokenizer_lock


class IncrementalDetokenizer:
    """Decode only a short window around the new token (as TGI and vLLM do), not the whole text.

    Decoding a window rather than the single token keeps tokenizers' context-dependent spacing
    right; holding back text that ends in U+FFFD waits for the rest of a multi-byte character.
    """

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self._lock = tokenizer_lock(tokenizer)
        self._ids: list[int] = []
        self._prefix_offset = 0  # start of the window the last delta was measured against
        self._read_offset = 0  # end of what has been turned into text

    def add(self, token_id: int) -> str:
        """Append one token; return the text it completes (possibly empty)."""
        self._ids.append(token_id)
        decode = self._tokenizer.decode
        with self._lock:
            prefix_text = decode(self._ids[self._prefix_offset : self._read_offset], skip_special_tokens=True)
            new_text = decode(self._ids[self._prefix_offset :], skip_special_tokens=True)
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return new_text[len(prefix_text) :]
        return ""
