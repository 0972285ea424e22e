"""vast-pipeline: build VAST-27M-style omni-modal video corpora on Ray and train VAST on them."""

__version__ = "0.1.0"
