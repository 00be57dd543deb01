"""Photos in: decoding, the data folder's scan and split, label moves and their journal."""
