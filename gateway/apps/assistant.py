"""The customer-service assistant: answers from a knowledge base, with citations.

A question is embedded with the knowledge base's own embedding model, the best passages
are found (dense and lexical, fused), and only the relevant ones (index.relevant) are
given to the chat model, numbered, with the conversation so far. The answer streams;
its first message carries the citations it rests on. When nothing relevant is found
the assistant says so and offers a person rather than let the model improvise, and a
caller may hand the conversation to a person at any time: an `assistant.handoff` event
on JetStream that the tenant's subscribers (its support desk) receive with the transcript.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing

from gateway.apps.checks import check_question
from gateway.apps.conversations import Conversation, Conversations, new_conversation_id
from gateway.apps.knowledge import Embedder, KnowledgeBases
from gateway.apps.llm import ChatModel, message
from gateway.auth.principal import call_record, caller
from gateway.deployments import Deployments
from gateway.metrics import ASSISTANT_ANSWERS
from llmos import subjects
from llmos.events import new_event
from llmos.knowledge.index import Hit, relevant
from llmos.messaging import EventPublisher
from llmos.v1 import apps_pb2, inference_pb2

#: tokens an answer may take unless the caller says fewer (or more)
ANSWER_TOKENS = 256
#: characters of each passage put in the prompt (the context window is the budget)
PASSAGE_CHARS = 700
#: earlier messages of the conversation put in the prompt
HISTORY_MESSAGES = 6

SYSTEM_PROMPT = """\
You are the customer-service assistant of {name}. Answer the customer's question using \
only the numbered passages below, and cite the passages you use like [1]. If the \
passages do not answer the question, say that you do not know and offer to connect the \
customer with a person.

Passages:
{passages}"""

NO_ANSWER = (
    "I could not find anything about that in the {name} knowledge base, so I would rather "
    "not guess. Would you like me to connect you with a person?"
)
HANDED_OFF = "I have passed our conversation to a person, who will take it from here."


def citations(hits: list[Hit]) -> list[apps_pb2.Citation]:
    return [
        apps_pb2.Citation(
            number=number,
            document=hit.chunk.document,
            chunk=hit.chunk.number,
            start=hit.chunk.start,
            end=hit.chunk.end,
            text=hit.chunk.text,
            score=hit.score,
        )
        for number, hit in enumerate(hits, start=1)
    ]


def passages_text(hits: list[Hit]) -> str:
    return "\n".join(
        f"[{number}] ({hit.chunk.document}) {hit.chunk.text[:PASSAGE_CHARS]}"
        for number, hit in enumerate(hits, start=1)
    )


class Assistant:
    """Ask: retrieve, answer, remember; or hand over to a person."""

    def __init__(
        self,
        bases: KnowledgeBases,
        chat: ChatModel,
        embed: Embedder,
        conversations: Conversations,
        events: EventPublisher,
        deployments: Deployments,
    ) -> None:
        self._deployments = deployments
        self._bases = bases
        self._chat = chat
        self._embed = embed
        self._conversations = conversations
        self._events = events

    async def ask(self, request: apps_pb2.AskRequest) -> AsyncGenerator[apps_pb2.AskResponse, None]:
        top_k = check_question(
            request.question, request.top_k, request.conversation_id, request.max_tokens
        )
        tenant = caller().tenant
        model = await self._deployments.resolve(tenant, request.model)
        base = await self._bases.get(tenant, request.knowledge_base, "knowledge_base")
        call_record().resource = f"knowledge_base/{base.name}"
        conversation = Conversation(
            tenant, caller().subject, base.name, request.conversation_id or new_conversation_id()
        )
        history = await self._conversations.history(conversation)
        question = message("user", request.question)
        if request.handoff:
            await self._hand_off(conversation, request.question, [*history, question])
            reply = message("assistant", HANDED_OFF)
            await self._conversations.append(conversation, question, reply)
            ASSISTANT_ANSWERS.labels(tenant, "handed_off").inc()
            yield apps_pb2.AskResponse(
                text=HANDED_OFF, done=True, conversation_id=conversation.id, handed_off=True
            )
            return
        vector = (await self._embed(base.embedding_model, [request.question]))[0]
        hits = await asyncio.to_thread(base.index.search, request.question, vector, top_k)
        hits = [hit for hit in hits if relevant(request.question, hit)]
        if not hits:
            text = NO_ANSWER.format(name=base.name)
            reply = message("assistant", text)
            await self._conversations.append(conversation, question, reply)
            ASSISTANT_ANSWERS.labels(tenant, "not_found").inc()
            yield apps_pb2.AskResponse(text=text, done=True, conversation_id=conversation.id)
            return
        system = SYSTEM_PROMPT.format(name=base.name, passages=passages_text(hits))
        prompt = [message("system", system), *history[-HISTORY_MESSAGES:], question]
        yield apps_pb2.AskResponse(
            conversation_id=conversation.id, citations=citations(hits), answered=True
        )
        answer: list[str] = []
        budget = request.max_tokens or ANSWER_TOKENS
        async with aclosing(self._chat.stream(model, prompt, budget)) as chunks:
            async for chunk in chunks:
                answer.append(chunk.text)
                yield apps_pb2.AskResponse(
                    text=chunk.text,
                    done=chunk.done,
                    answered=True,
                    model=chunk.model,
                    usage=chunk.usage if chunk.done else None,
                )
        reply = message("assistant", "".join(answer))
        await self._conversations.append(conversation, question, reply)
        ASSISTANT_ANSWERS.labels(tenant, "answered").inc()

    async def _hand_off(
        self, conversation: Conversation, reason: str, transcript: list[inference_pb2.ChatMessage]
    ) -> None:
        event = new_event("gateway", conversation.tenant)
        handoff = event.assistant_handoff
        handoff.knowledge_base = conversation.knowledge_base
        handoff.conversation_id = conversation.id
        handoff.reason = reason
        handoff.transcript.extend(transcript)
        handoff.principal = conversation.owner
        await self._events.publish(subjects.ASSISTANT_HANDOFF, event)
