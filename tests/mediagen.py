"""Test media: the same generator the demo uses (``vast.pipeline.sample_media``)."""

from vast.pipeline.sample_media import make_audio_only, make_corrupt, make_video

__all__ = ["make_audio_only", "make_corrupt", "make_video"]
