"""Vision: decode and preprocess images, then encode them into embeddings.

decode.py and preprocess.py turn bytes into the encoder's uint8 NHWC tensor;
the encoders (RKNN on the board, ONNX elsewhere) turn that into float32
embeddings that the language model takes in place of image tokens.
"""
