"""Reading and writing files: Detectron pickles, embedded cfg text, converted checkpoints."""
