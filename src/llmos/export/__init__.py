"""Checkpoints in and out of other formats. `--format run`: the two files, a params file + a
numpy-only run.py (`params.py` writes the first, `run.py` is the second, copied as is);
`--format gguf`: llama.cpp's file and an Ollama Modelfile (`gguf.py`); and the other direction,
a Hugging Face Llama-family folder into an llmos checkpoint (`hf_import.py`)."""
