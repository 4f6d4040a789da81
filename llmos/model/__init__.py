"""The Llama-family language model shared by the inference engine and the trainer.

`llama.py` is the torch module, `folder.py` reads and writes the Hugging Face-layout
folder every part of LLM OS stores models in, `gguf_import.py` turns a GGUF file into
such a folder, and `text.py` holds the tokenizer and chat template.
"""
