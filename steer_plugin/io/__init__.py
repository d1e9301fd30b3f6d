"""Files and the terminal: atomic writes, output checks, safetensors/npy readers, escaping, text tables, figures."""
