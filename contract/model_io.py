"""The names an exported model is known by: its graph's tensors and its ONNX metadata keys.

Training writes them (``training.export``), the engine's backends read them;
neither imports the other, both import this.
"""

from __future__ import annotations

from contract.geometry import ChunkGeometry

# A whole-window model: waveform [batch, samples] -> probs [batch, labels].
INPUT_NAME = "waveform"
OUTPUT_NAME = "probs"
# A chunked model's two sub-graphs: chunks [N, chunk] -> embeddings [N, D]; window_embeddings [B, K, D] -> probs.
CHUNKS_INPUT = "chunks"
EMBEDDINGS_OUTPUT = "embeddings"
WINDOW_EMBEDDINGS_INPUT = "window_embeddings"

# Metadata every model carries, and the keys that describe a chunked one (with contract.geometry's three).
REQUIRED_METADATA_KEYS = ("labels", "sample_rate", "window_s")
EMBEDDING_DIM_KEY = "embedding_dim"
CHUNK_METADATA_KEYS = ("chunk_samples", "chunk_hop_samples", "chunks_per_window", EMBEDDING_DIM_KEY)


def chunk_metadata(geometry: ChunkGeometry, embedding_dim: int) -> dict[str, str]:
    """The four chunk keys of a chunked model (none for a whole-window one), as the engine reads them back."""
    if not geometry.chunked:
        return {}
    return {**geometry.metadata(), EMBEDDING_DIM_KEY: str(int(embedding_dim))}
