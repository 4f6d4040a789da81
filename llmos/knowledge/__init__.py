"""Knowledge bases for the customer-service assistant: the pure logic.

A tenant uploads documents into a named knowledge base; `documents` turns each upload
into plain text, `chunking` cuts that text into passages with exact offsets (so an answer
can cite where it came from), and `index` keeps the passages searchable by meaning
(vectors from the platform's Embed API) and by words (BM25), and decides whether a
passage is relevant enough to answer from. Nothing here does I/O: embedding, storage
and transport belong to the service that uses these modules.
"""
