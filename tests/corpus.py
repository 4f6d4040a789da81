"""A fixed English text for the training tests: their loss curves depend on the text,
so it must not change when documentation does (they used to read README.md)."""

from __future__ import annotations

_PARAGRAPHS = (
    "An operating system shares one machine between many programs. It decides who runs "
    "next, keeps each program's memory apart from the others, and lends out the disks, "
    "the network and the clock. A program asks; the system answers, or says why not.",
    "A scheduler keeps queues. Work that matters more goes first, but nothing waits "
    "forever: every tenant gets its fair share over time, and a reservation holds room "
    "for the work that was promised it. When the machine is full, the least important "
    "work is asked to stop, saves what it has done, and starts again later from there.",
    "A model is a file of numbers and a recipe for using them. Training changes the "
    "numbers a little at every step so that the next word is a little less surprising. "
    "A checkpoint writes the numbers down, so a job that was stopped can go on exactly "
    "where it left off, with the same numbers it would have had without the stop.",
    "Storage remembers. It keeps every blob by the hash of its bytes, encrypts it before "
    "it reaches the disk, and counts what each tenant keeps against its quota. A backup "
    "is a copy taken while nothing changes, and a restore puts it back as it was.",
    "The audit log writes down every action once, in order, each record chained to the "
    "one before it, so that nobody can change the past without the chain breaking. "
    "Names and addresses of people are redacted before they are stored.",
    "The gateway is the only door. It asks every caller who they are, checks what they "
    "may do, counts how much they have done this minute, and shuts the door for a while "
    "on anyone who keeps knocking with the wrong key.",
)

#: About 2.5 KB of text, repeated: enough windows for a few dozen small training steps.
TEXT = "\n\n".join(_PARAGRAPHS * 4) + "\n"
