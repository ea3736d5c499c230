"""`--chat` and `--system`: a row's prompt sent as a chat, through the chat template.

Instruct models answer a bare prompt poorly: they were trained on chats rendered by
their chat template. With `--chat` each prompt (a row's, or a template's text)
becomes the user message of a one-turn chat; `--system TEXT` adds a system message
before it (and implies `--chat`). A row that already holds messages keeps them,
with the system message put first unless the chat starts with one of its own: the
row's own system message is the more specific, as in vLLM's and OpenAI's servers,
where a request's messages are sent as given.

The rule lives here, once, for every reader (JSONL, Parquet, OpenAI batch lines)
and `BatchQueue.submit()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from batching.errors import UsageError
from batching.records import Message

__all__ = ["ChatFraming"]


@dataclass(frozen=True, slots=True)
class ChatFraming:
    """How prompts become chats: `system`, if set, is every chat's first message.

    >>> framing = ChatFraming(system="Answer in French.")
    >>> framing.frame("Hi", None)
    ({'role': 'system', 'content': 'Answer in French.'}, {'role': 'user', 'content': 'Hi'})
    >>> framing.frame(None, ({"role": "system", "content": "Be brief."},))
    ({'role': 'system', 'content': 'Be brief.'},)
    """

    system: str | None = None

    def __post_init__(self) -> None:
        if self.system is not None and not self.system.strip():
            raise UsageError("--system: the system message is empty; give its text")

    def frame(self, prompt: str | None, messages: Sequence[Message] | None) -> tuple[Message, ...]:
        """The chat a row with `prompt` or `messages` (one of them set) is sent as."""
        if messages is None:
            chat: tuple[Message, ...] = ({"role": "user", "content": prompt},)
        else:
            chat = tuple(messages)
            if chat and chat[0].get("role") == "system":
                return chat
        if self.system is None:
            return chat
        return ({"role": "system", "content": self.system}, *chat)
