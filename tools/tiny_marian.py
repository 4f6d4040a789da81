"""A tiny, random Hugging Face Marian translation model, built from nothing.

No real translation model can be downloaded where LLM OS is built and tested, so tests
and benchmarks make their own: a SentencePiece model trained on a few dozen lines of
public-domain English (the Gettysburg Address, the opening of Pride and Prejudice, the
Declaration of Independence) and a one-layer Marian with seeded random weights. It
translates into nonsense, but it is a real Marian folder — the same files, tokenizer and
architecture as Helsinki-NLP's opus-mt models — so converting and serving it exercises
exactly the code a real model goes through. Everything is seeded and single-threaded,
so the same arguments build the same model.

    python -m tools.tiny_marian FOLDER [--source en] [--target de] [--seed 0]
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import warnings
from pathlib import Path

#: Public-domain English the SentencePiece model learns its pieces from.
TEXT = """\
Four score and seven years ago our fathers brought forth on this continent a new nation.
It was conceived in Liberty, and dedicated to the proposition that all men are created equal.
Now we are engaged in a great civil war, testing whether that nation can long endure.
We are met on a great battle-field of that war.
We have come to dedicate a portion of that field, as a final resting place.
It is altogether fitting and proper that we should do this.
But, in a larger sense, we can not dedicate, we can not consecrate this ground.
The brave men, living and dead, who struggled here, have consecrated it.
The world will little note, nor long remember what we say here.
But it can never forget what they did here.
It is for us the living, rather, to be dedicated here to the unfinished work.
It is rather for us to be here dedicated to the great task remaining before us.
That this nation, under God, shall have a new birth of freedom.
Government of the people, by the people, for the people, shall not perish from the earth.
It is a truth universally acknowledged, that a single man in possession of a good fortune,
must be in want of a wife.
However little known the feelings or views of such a man may be on his first entering a
neighbourhood, this truth is so well fixed in the minds of the surrounding families.
He is considered the rightful property of some one or other of their daughters.
My dear Mr. Bennet, said his lady to him one day,
have you heard that Netherfield Park is let at last?
Mr. Bennet replied that he had not.
But it is, returned she; for Mrs. Long has just been here, and she told me all about it.
Mr. Bennet made no answer.
Do you not want to know who has taken it? cried his wife impatiently.
You want to tell me, and I have no objection to hearing it.
This was invitation enough.
When in the Course of human events, it becomes necessary for one people to dissolve the
political bands which have connected them with another.
We hold these truths to be self-evident, that all men are created equal.
They are endowed by their Creator with certain unalienable Rights.
Among these are Life, Liberty and the pursuit of Happiness.
Governments are instituted among Men, deriving their just powers from the consent of the governed.
Prudence, indeed, will dictate that Governments long established should not be changed
for light and transient causes.
"""

#: Small enough that building, converting and loading take about a second on one core.
VOCAB_SIZE, D_MODEL, FFN, HEADS, POSITIONS = 64, 32, 64, 2, 64
INIT_STD = 0.5


def train_pieces(folder: Path) -> Path:
    """Train the unigram SentencePiece model on TEXT; its path, `folder/spm.model`.

    eos is id 0 and there is no bos or pad, the layout Marian's tokenizer expects; the
    vocabulary limit is soft because so little text cannot always fill 40 pieces.
    """
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT.splitlines()),
        model_writer=model,
        model_type="unigram",
        vocab_size=VOCAB_SIZE,
        bos_id=-1,
        eos_id=0,
        unk_id=1,
        pad_id=-1,
        hard_vocab_limit=False,
        num_threads=1,  # more threads could order equal-score pieces differently
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    path = folder / "spm.model"
    path.write_bytes(model.getvalue())
    return path


def build_tiny_marian(folder: Path, source: str = "en", target: str = "de", seed: int = 0) -> Path:
    """Write a tiny random Marian `source`->`target` model into `folder`; returns `folder`."""
    import sentencepiece as spm
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        pieces_path = train_pieces(Path(scratch))
        pieces = spm.SentencePieceProcessor(model_file=str(pieces_path))
        vocab = {pieces.id_to_piece(i): i for i in range(pieces.get_piece_size())}
        vocab["<pad>"] = pad_id = len(vocab)
        vocab_path = Path(scratch) / "vocab.json"
        vocab_path.write_text(json.dumps(vocab))
        with warnings.catch_warnings():
            # Marian's Moses punctuation normalizer is optional, and unused here
            warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")
            tokenizer = MarianTokenizer(
                vocab=str(vocab_path),
                source_spm=str(pieces_path),
                target_spm=str(pieces_path),
                source_lang=source,
                target_lang=target,
            )
        tokenizer.save_pretrained(str(folder))
    config = MarianConfig(
        vocab_size=len(vocab),
        d_model=D_MODEL,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=FFN,
        decoder_ffn_dim=FFN,
        max_position_embeddings=POSITIONS,
        pad_token_id=pad_id,
        eos_token_id=0,
        decoder_start_token_id=pad_id,
        forced_eos_token_id=0,
        # Marian's default (0.02) leaves a random model's output blind to its input, and
        # tests comparing translations would then prove nothing.
        init_std=INIT_STD,
    )
    torch.manual_seed(seed)
    MarianMTModel(config).save_pretrained(str(folder))
    return folder


def main(argv: list[str] | None = None) -> None:
    """Build the tiny model into the folder given on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--source", default="en")
    parser.add_argument("--target", default="de")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.folder.exists() and any(args.folder.iterdir()):
        parser.error(f"{args.folder} is not empty")
    build_tiny_marian(args.folder, args.source, args.target, args.seed)
    print(f"built a tiny random {args.source}->{args.target} Marian in {args.folder}")


if __name__ == "__main__":
    main()
