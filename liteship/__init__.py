"""liteship: fine-tuned model -> .tflite bundle -> phone or edge board, with proof of size and speed."""

__version__ = "0.1.0"
